"""Defaults shared by every config; each config overrides what it needs."""

from typing import Any

import ml_collections

from cam_jax import models


def model_option_names(name: str) -> list[str]:
  """The keyword options of the registered model `name` (`cam_jax.models.options`)."""
  return list(models.options(name))


def model_options(name: str, **values: Any) -> ml_collections.ConfigDict:
  """`config.model.kwargs` for the model `name`: `values` set, every other option None.

  A locked config takes no new keys, so only an option that is a key can be set by
  `--config.model.kwargs.pooling=max` or a sweep. None means the model's own default (a
  registry alias keeps its own, e.g. `tiny_gmp`'s pooling): the options left None reach
  neither the constructor nor the checkpoint's `model_kwargs`
  (`cam_jax.models.given_options`). Each option is a Python literal on the command line
  (`pooling=max`, `widths='(8, 16)'`, `stage_strides=None`); the constructor checks the
  values.
  """
  names = model_option_names(name)
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ValueError(f'{name} has no option {unknown[0]!r}; its options: {", ".join(names)}')
  options = ml_collections.ConfigDict()
  for option in names:
    options[option] = ml_collections.FieldReference(values.get(option), field_type=object)
  return options


def get_common() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Parameters, data order and augmentation all derive from it.
  config.distributed = False  # jax.distributed.initialize() for multi-host runs.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cam_synth'  # A name of cam_jax.data.DATASETS.
  config.data.builder_config = ml_collections.FieldReference(None, field_type=str)
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS default
  config.data.prepare = False  # Prepare an embedded dataset on first use.
  # Folder with the archives of a manual dataset (default: DATA_DIR/downloads/manual).
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  # The WSOL folder layout (data.name='wsol'), read in place: README, "WSOL folders".
  config.data.wsol = ml_collections.ConfigDict()
  config.data.wsol.dataset = 'CUB'  # Folder name under metadata_root: CUB, ILSVRC, OpenImages.
  config.data.wsol.metadata_root = ml_collections.FieldReference(None, field_type=str)
  config.data.wsol.image_root = ml_collections.FieldReference(None, field_type=str)
  config.data.wsol.mask_root = ml_collections.FieldReference(None, field_type=str)
  config.data.wsol.class_names_file = ml_collections.FieldReference(None, field_type=str)
  # Folder-per-class data (data.name='folders'), read in place: ROOT/<split>/<class>/<image>,
  # or ROOT/<class>/<image> split at random (cam_jax/data/folders.py).
  config.data.folders = ml_collections.ConfigDict()
  config.data.folders.root = ml_collections.FieldReference(None, field_type=str)
  # e.g. 'train=0.6,validation=0.2,test=0.2'; None: the splits are ROOT's sub-folders.
  config.data.folders.random_splits = ml_collections.FieldReference(None, field_type=str)
  config.data.folders.split_seed = 0
  # Optional boxes: `image_id,x0,y0,x1,y1` lines, the id relative to the split's folder.
  config.data.folders.boxes_file = ml_collections.FieldReference(None, field_type=str)
  config.data.train_split = 'train'
  # Examples of train_split kept out of training (a fixed random choice): the split
  # 'holdout' for select_split.
  config.data.holdout = 0
  # Where the evaluations during training run and workdir/best/ is chosen: a split that
  # is not the reported eval_split (Choe et al.: never choose on the test set), or
  # 'holdout'.
  config.data.select_split = 'validation'
  config.data.eval_split = 'test'  # The reported result (eval.json).
  config.data.image_size = 224  # The network's input side.
  # How pixels become the network's input (cam_jax.data.conventions.PRESETS): None takes the
  # convention the weights were trained with (init_from, a converted checkpoint), else
  # 'imagenet' (torchvision's RGB mean/std). Naming another one than the weights' is an error.
  config.data.input_convention = ml_collections.FieldReference(None, field_type=str)
  config.data.flip = True  # Random horizontal flips in training.
  # Training crop: 'random_resized' (the flax ImageNet example's Inception crop) or 'resize'
  # (the whole image to S×S).
  config.data.train_crop = 'random_resized'
  # Evaluation input: 'resize' (the whole image to S×S, as the paper) or 'resize_crop' (the
  # shorter side to eval_resize_shorter, default S / 0.875, then the central S×S crop).
  # Boxes are mapped back to the original image either way.
  config.data.eval_crop = 'resize'
  config.data.eval_resize_shorter = ml_collections.FieldReference(None, field_type=int)
  config.data.max_boxes = 32  # Ground-truth boxes per image, padded to this many.
  config.data.num_threads = 4  # grain reader threads per process.
  config.data.num_workers = 0  # grain worker processes per host that decode (0: in-process).

  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_gap'  # A name of cam_jax.models.MODELS.
  # Passed to the model's constructor: `model_options(name, ...)`, which makes every option
  # of the model settable from the command line.
  config.model.kwargs = model_options(config.model.name)
  # Activations and matmuls; 'bfloat16' is mixed precision: parameters and optimizer state
  # stay float32.
  config.model.dtype = 'float32'

  config.batch_size = 64  # Global: split over every device of every process.
  # Set to make the global batch this × the number of devices instead.
  config.per_device_batch_size = ml_collections.FieldReference(None, field_type=int)
  config.total_steps = 1000
  # Set to train for this many epochs of the train split instead (total_steps is derived).
  config.num_epochs = ml_collections.FieldReference(None, field_type=float)
  config.label_smoothing = 0.0
  # Progressive resizing: ((size, last_step), ...) trains on images resized to size×size
  # up to and including last_step, then at data.image_size (one compile per size).
  config.progressive_resizing = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' (with momentum) or 'adamw'.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4  # On kernels only.
  config.optimizer.schedule = 'step'  # 'step' (×0.1 every decay_every), 'cosine', 'constant'.
  config.optimizer.decay_every = 40_000
  # Set to give decay_every in epochs instead of steps.
  config.optimizer.decay_every_epochs = ml_collections.FieldReference(None, field_type=float)
  config.optimizer.warmup_steps = 0
  # Parameters are named by path, e.g. 'trunk/conv1/conv/kernel', 'head/bias'. Regexes
  # (full match) of parameters that do not train:
  config.optimizer.frozen = ()
  # The layers the paper adds to a pretrained backbone, and how much faster they learn
  # (fine-tuning practice: 10; 1 trains every layer alike).
  config.optimizer.new_layers = (r'cam_conv/.*', r'head/.*')
  config.optimizer.new_layers_lr_multiplier = 1.0

  config.log_every = 50  # Steps between progress lines and metrics.jsonl records.
  config.eval_every = 1000  # Steps between evals of select_split during training; 0: never.
  config.eval_examples_during_training = ml_collections.FieldReference(None, field_type=int)
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  # workdir/best/ keeps the checkpoint with the best value of this metric of the evals
  # during training ('' for none), e.g. 'gt_known_loc_accuracy' with best_mode 'max'.
  config.best_metric = 'cls_top1_error'
  config.best_mode = 'min'
  config.tensorboard = True  # Event files in workdir/tensorboard (tensorboardX, no TF).
  # Start from another run's weights (a workdir, or its checkpoints/ or best/ folder),
  # except the parameters matching `reinit` (regexes), which are initialised afresh.
  config.init_from = ml_collections.ConfigDict()
  config.init_from.workdir = ml_collections.FieldReference(None, field_type=str)
  config.init_from.step = ml_collections.FieldReference(None, field_type=int)
  config.init_from.reinit = (r'head/.*',)
  # Or start from a torchvision (.pth, .safetensors) or Caffe (.caffemodel) file of ImageNet
  # weights, converted on the fly (cam_jax.pretrained; README, "Pretrained weights"): the
  # backbone loads, the layers the network adds (CAM conv, head) start fresh.
  config.init_from.pretrained = ml_collections.FieldReference(None, field_type=str)
  # The file's framework: 'torchvision' or 'caffe'; None: detected from the file.
  config.init_from.pretrained_format = ml_collections.FieldReference(None, field_type=str)

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128  # Global.
  config.eval.num_examples = ml_collections.FieldReference(None, field_type=int)  # None: all
  config.eval.top_k = 5
  config.eval.cam_threshold = 0.2  # Fraction of the CAM's max kept (paper, Sec. 3.2).
  config.eval.iou_threshold = 0.5
  # The paper's test heuristic (Table 3): tight and loose box thresholds, fractions of each
  # CAM's max. The paper does not give them: 0.2 is its box threshold, 0.5 a tighter one.
  config.eval.heuristic_thresholds = (0.5, 0.2)
  # The maps: 'cam', or the baselines 'backprop' (Simonyan et al.) and 'gradcam'.
  config.eval.saliency = 'cam'
  # Saliency baselines that --mode=evaluate scores beside it (their localization rows,
  # prefixed 'backprop/' or 'gradcam/', in eval.json); not at the end of training.
  config.eval.baselines = ()
  # A row of the paper's Tables 1-2 (evaluate.PAPER_ROWS) printed beside our numbers.
  config.eval.paper_row = ''
  config.eval.box_threshold_step = 0.01  # τ grid of MaxBoxAcc/V2 (Choe et al.: 0.01)
  config.eval.pxap_threshold_step = 0.001  # score grid of PxAP (wsolevaluation: 0.001)
  config.eval.num_pictures = 12  # CAM figures written to workdir/cams/.
  # A path: one JSON line per image (top-k classes, probabilities, boxes, hits), written
  # atomically at the end of the evaluation; '' writes none.
  config.eval.predictions_file = ''
  # Processes that box and score the maps while the device runs the next batch
  # (cam_jax.box_stage): -1 one per host core, 0 none (in the main process).
  config.eval.box_workers = -1

  # Further evaluators run by --mode=evaluate and at the end of training (cam_jax.evaluators),
  # each `config.evals.NAME = dict(type=..., **kwargs)`, its numbers as NAME/metric in
  # eval.json, e.g. the released ILSVRC pipeline of the paper's Tables 2-3:
  #   config.evals.official = dict(type='cam_official', thresholds=(20, 100, 110))
  # `during_training=True` also runs one during training, on select_split and
  # eval_examples_during_training images; `best_metric` may then name 'NAME/metric'.
  config.evals = ml_collections.ConfigDict()

  # Pictures (cam_jax.viz): the official code's look, jet at 0.3 over the image at 0.5.
  config.viz = ml_collections.ConfigDict()
  config.viz.colormap = 'jet'
  config.viz.heat_weight = 0.3
  config.viz.image_weight = 0.5
  config.viz.max_side = 512  # pictures of larger images are shrunk to this long side

  # Figures of an evaluation run, in workdir/figures/ (cam_jax.figures): the paper's Fig. 3
  # (the best-scoring CAMs of some classes), Fig. 5 (CAM beside backprop saliency) and
  # Fig. 6a (boxes: ground truth green, prediction red), from the first `num_examples`
  # images of the eval split.
  config.figures = ml_collections.ConfigDict()
  config.figures.enabled = True
  config.figures.num_examples = 1000
  config.figures.num_classes = 6  # Fig. 3: rows (classes)
  config.figures.per_class = 4  # Fig. 3: columns (best-scoring images of the class)
  config.figures.num_images = 8  # Fig. 5 and 6a: images

  # --mode=transfer (cam_jax.transfer; paper Sec. 4): the pooled (GAP) features of a trained
  # or converted network (`source`: a workdir, checkpoints/ or best/, a step folder or a
  # converted checkpoint) on the dataset of config.data, a one-vs-rest linear SVM on them,
  # and the CAMs of the new classes from the SVM's weights. Results in WORKDIR/transfer/.
  config.transfer = ml_collections.ConfigDict()
  config.transfer.source = ml_collections.FieldReference(None, field_type=str)
  # The SVM's C is chosen on validation_split (None: `validation_fraction` of the train
  # split, held out per class) among `svm_c`, then refit on all training images; the test
  # split is config.data.eval_split and is never used for a choice.
  config.transfer.svm_c = (0.1, 1.0, 10.0, 100.0, 1000.0)
  config.transfer.validation_split = ml_collections.FieldReference(None, field_type=str)
  config.transfer.validation_fraction = 0.2
  config.transfer.max_iter = 100_000  # LinearSVC's iterations (liblinear)
  # Image regions whose features are classified (paper Table 4): 'full' (the image),
  # 'cam' (the crop given by the CAM box of the SVM's top class, on train and test) and
  # 'gt' (the ground-truth box's crop; needs boxes).
  config.transfer.crops = ('full',)
  # Whether the SVM's CAMs are evaluated (boxes, MaxBoxAcc, PxAP) when the test split has
  # boxes or masks, and figures drawn.
  config.transfer.localization = True
  config.transfer.batch_size = 64  # Global, for the feature extraction.
  # Features cached in WORKDIR/transfer/features/ (resumable); False recomputes them.
  config.transfer.cache = True
  # Published numbers printed beside ours, by crop (and 'cam_box_accuracy'), in percent.
  config.transfer.paper = ml_collections.ConfigDict()

  # --mode=concept (cam_jax.concepts; paper Sec. 4.2, Fig. 10): a detector of the concept
  # that the images of `positives` show and those of `negatives` do not (two folders), a
  # linear SVM on the GAP features of config.transfer.source with hard-negative mining, and
  # the concept's CAMs on the best-scoring positives. Results in WORKDIR/concept/.
  config.concept = ml_collections.ConfigDict()
  config.concept.positives = ml_collections.FieldReference(None, field_type=str)
  config.concept.negatives = ml_collections.FieldReference(None, field_type=str)
  config.concept.svm_c = 1.0
  # Negatives of the first fit, a fixed random choice; None: as many as the positives.
  config.concept.init_negatives = ml_collections.FieldReference(None, field_type=int)
  config.concept.rounds = 3  # mining rounds: margin-violating negatives join, then a refit
  config.concept.per_round = 100  # at most this many hard negatives join per round
  config.concept.num_pictures = 12

  # --mode=units (cam_jax.units; paper Sec. 5, Fig. 13): for each class, the units of the
  # CAM layer with the largest head weights, and each unit's top-activating images of
  # `split` with the region where its activation exceeds the `quantile` of all its
  # activations over the split (network dissection's procedure). Figures in WORKDIR/units/.
  config.units = ml_collections.ConfigDict()
  config.units.split = ml_collections.FieldReference(None, field_type=str)  # None: eval_split
  config.units.num_examples = ml_collections.FieldReference(None, field_type=int)  # None: all
  config.units.classes = ()  # class indices; empty: the first `num_classes`
  config.units.num_classes = 6
  config.units.top_units = 3  # units per class, by head weight
  config.units.top_images = 4  # images per unit, by the unit's peak activation
  config.units.quantile = 0.995  # network dissection: the top 0.5 % of activations
  return config


def set_ilsvrc_finetuning(config: ml_collections.ConfigDict, image_size: int = 224) -> None:
  """The paper's fine-tuning recipe on ILSVRC-2012 (its official solver): SGD momentum 0.9,
  base lr 1e-3, ×0.1 every 40k iterations, 160k iterations, weight decay 5e-4, batch 64.

  In epochs of the 1,281,167 training images: 160k × 64 = 8.0 epochs, decay every 2.0
  (`--config.num_epochs=8 --config.optimizer.decay_every_epochs=2` says the same at any
  batch size). The best checkpoint (workdir/best/) is chosen on 10,000 training images
  held out from training; the result is reported on the validation split.

  The paper fine-tunes from ImageNet weights: add
  `--config.init_from.pretrained=FILE` (a torchvision .pth or a Caffe .caffemodel of the
  backbone; README, "Pretrained weights"), with `--config.model.kwargs.variant=torchvision`
  for torchvision's AlexNet and GoogLeNet, and, as fine-tuning practice,
  `--config.optimizer.new_layers_lr_multiplier=10`. The backbone loads, the added CAM conv
  and head start fresh, and the input convention follows the weights.
  """
  config.data.name = 'ilsvrc2012_loc'  # Prepared from the manual files: README.
  config.data.eval_split = 'validation'
  # The best checkpoint is chosen on 10,000 training images held out (0.8 %), as the
  # paper reports on validation.
  config.data.holdout = 10_000
  config.data.select_split = 'holdout'
  config.data.image_size = image_size
  config.batch_size = 64
  config.total_steps = 160_000
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = 'step'
  config.optimizer.decay_every = 40_000
  config.log_every = 100
  config.eval_every = 10_000
  config.eval_examples_during_training = 10_000
  config.checkpoint_every = 5_000


def set_runlocal(config: ml_collections.ConfigDict, image_size: int = 64) -> None:
  """A few steps of the real architecture on the synthetic dataset, on a CPU."""
  config.data.name = 'cam_synth'
  config.data.eval_split = 'test'
  config.data.holdout = 0
  config.data.select_split = 'validation'
  config.data.prepare = True
  config.data.image_size = image_size
  config.data.max_boxes = 4
  config.batch_size = 8
  config.total_steps = 4
  config.optimizer.decay_every = 1000
  config.log_every = 2
  config.eval_every = 0
  config.checkpoint_every = 4
  config.eval.batch_size = 8
  config.eval.num_examples = 16
  config.eval.num_pictures = 2


_PAPER_ROWS = {'googlenet_gap': 'GoogLeNet-GAP', 'vgg16_gap': 'VGGnet-GAP',
               'alexnet_star_gap': 'AlexNet*-GAP', 'alexnet_gap': 'AlexNet-GAP',
               'googlenet_gmp': 'GoogLeNet-GMP', 'nin': 'NIN', 'googlenet': 'GoogLeNet',
               'vgg16': 'VGGnet', 'alexnet': 'AlexNet'}


def get_network_config(model_name: str, arg: str | None, *, image_size: int = 224,
                       runlocal_image_size: int = 64, **model_kwargs):
  """A paper network: ILSVRC fine-tuning by default, `runlocal` for a CPU smoke run."""
  config = get_common()
  config.model.name = model_name
  config.model.kwargs = model_options(model_name, **model_kwargs)
  set_ilsvrc_finetuning(config, image_size)
  # The paper's numbers are printed beside ours (ILSVRC validation only).
  config.eval.paper_row = _PAPER_ROWS.get(model_name, '')
  if arg == 'runlocal':
    config.eval.paper_row = ''
    set_runlocal(config, runlocal_image_size)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of the {model_name} config; known: 'runlocal'")
  return config
