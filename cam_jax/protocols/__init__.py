"""Reference evaluation protocols reproduced exactly: zhoubolei/CAM's released code
(`cam_official`) and clovaai/wsolevaluation (`wsolevaluation`)."""
