r"""Fine-grained birds with GoogLeNet-GAP features and CAM crops (paper Sec. 4.1, Table 4).

  python -m cam_jax.convert --from=caffe --network=googlenet_gap \
      --weights=imagenet_googlenetCAM_train_iter_120000.caffemodel --out=weights/googlenet_cam
  python -m cam_jax.main --config=configs/cub_transfer.py --workdir=runs/cub_transfer \
      --mode=transfer --config.transfer.source=weights/googlenet_cam

The released GoogLeNet-GAP (or any GAP network's workdir) is applied, frozen, to
CUB-200-2011 (`cub2011_loc`, prepared from your files: README, "Preparing ILSVRC and
CUB"): a linear SVM on the GAP features of the whole image (`full`), of the box of the
CAM of the full-image SVM's top class (`cam`, on train and test images alike), and of the
ground-truth box (`gt`); each SVM's C chosen on 20 % of each class's training images.
The table printed at the end has the paper's numbers beside ours: 63.0 % (full image),
67.8 % (CAM crop), 70.5 % (ground-truth box), and CAM boxes right (IoU >= 0.5) in 41.0 %
of the test images. Results in WORKDIR/transfer/eval.json, CAM figures of the bird
classes in WORKDIR/transfer/figures/.

`:tiny` is the same recipe at 32×32 with small batches, for tests on the fake CUB
archives the tests write (`--config.data.data_dir=...`, any small GAP source).
"""

from configs import common

from cam_jax import transfer


def get_config(arg: str | None = None):
  config = common.get_common()
  config.data.name = 'cub2011_loc'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.image_size = 224
  config.data.eval_crop = 'resize'  # the whole image, as the paper's CAMs see it
  config.transfer.crops = ('full', 'cam', 'gt')
  config.transfer.batch_size = 64
  config.transfer.paper = dict(transfer.PAPER_CUB)
  config.eval.batch_size = 64
  config.eval.num_pictures = 12
  if arg == 'tiny':
    config.data.image_size = 32
    config.transfer.batch_size = 16
    config.transfer.svm_c = (1.0, 100.0)
    config.eval.batch_size = 16
    config.eval.num_pictures = 2
    config.figures.num_examples = 16
    config.data.num_threads = 2
  elif arg:
    raise ValueError(f'unknown variant {arg!r}; known: tiny')
  return config
