"""Defaults shared by every config; each config overrides what it needs."""

import ml_collections


def get_common() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Parameters, data order and augmentation all derive from it.
  config.distributed = False  # jax.distributed.initialize() for multi-host runs.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cam_synth'  # A name of cam_jax.data.DATASETS.
  config.data.builder_config = ml_collections.FieldReference(None, field_type=str)
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS default
  config.data.prepare = False  # Prepare an embedded dataset on first use.
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.image_size = 224  # The network's input side.
  config.data.flip = True  # Random horizontal flips in training.
  config.data.max_boxes = 32  # Ground-truth boxes per image, padded to this many.
  config.data.num_threads = 4  # grain reader threads per process.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_gap'  # A name of cam_jax.models.MODELS.
  config.model.kwargs = ml_collections.ConfigDict()  # Passed to the model's constructor.

  config.batch_size = 64  # Global: split over every device of every process.
  config.total_steps = 1000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' (with momentum) or 'adamw'.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4  # On kernels only.
  config.optimizer.schedule = 'step'  # 'step' (×0.1 every decay_every), 'cosine', 'constant'.
  config.optimizer.decay_every = 40_000
  config.optimizer.warmup_steps = 0

  config.log_every = 50  # Steps between progress lines and metrics.jsonl records.
  config.eval_every = 1000  # Steps between classification evals during training; 0: never.
  config.eval_examples_during_training = ml_collections.FieldReference(None, field_type=int)
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128  # Global.
  config.eval.num_examples = ml_collections.FieldReference(None, field_type=int)  # None: all
  config.eval.top_k = 5
  config.eval.cam_threshold = 0.2  # Fraction of the CAM's max kept (paper, Sec. 3.2).
  config.eval.iou_threshold = 0.5
  config.eval.num_pictures = 12  # CAM figures written to workdir/cams/.
  return config
