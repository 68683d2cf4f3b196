"""Default: ResNet18 (the reference's 20-layer CIFAR ResNet) + WA on CIFAR-10.

The reference recipe (the paper's code, `cifar_main.py` and `train.sh`):
SGD momentum 0.9, weight decay 5e-4 coupled into every gradient, LR 0.1 for
epochs 0-80, 0.01 for 81-120, 0.001 after, 160 epochs, batch 128, test batch 100.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Replicas trained side by side in one program (vmapped): seeds seed, seed + 1, ...
  config.num_seeds = 1

  config.model = ml_collections.ConfigDict()
  config.model.arch = "resnet18"
  # Attention spec: a name, optionally with options given by name as literals
  # (defaults shown): none | se(reduction=4) | cbam(reduction=4) |
  # eca(kernel_size=3) | gc(reduction=4) | wa(wavelet='haar', stages='reference')
  # (alias wad). wavelet: any discrete pywt name; stages: 'reference' (where the
  # paper's code puts WA) or 'all' (every stride-2 downsampling). E.g.
  # --config.model.attention=se or --config.model.attention="wa(wavelet='db2')".
  config.model.attention = "wa"
  config.model.block = ml_collections.config_dict.placeholder(str)  # ResNets: basic | bottleneck

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"  # any tfds dataset with image/label features
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir
  # A folder <root>/{train,test}/<label>/*.jpg|png, or a .tar.gz of one, or an
  # official CIFAR archive as downloaded (cifar-10-python.tar.gz,
  # cifar-100-binary.tar.gz, ...; https://www.cs.toronto.edu/~kriz/cifar.html);
  # when set, it is used instead of tfds.
  config.data.image_folder = ml_collections.config_dict.placeholder(str)
  # CIFAR-100 archives: the 100 "fine" labels or the 20 "coarse" superclasses.
  config.data.cifar100_labels = "fine"
  # Where an image folder's decoded uint8 splits are cached, so that later runs
  # skip decoding (wacnn_jax.data.cache; one copy per content: a subset, or the same
  # images from another archive or folder, share it); unset =
  # $XDG_CACHE_HOME/wacnn_jax/datasets (~/.cache/wacnn_jax/datasets), '' = no cache.
  # tfds datasets are not cached.
  config.data.cache_dir = ml_collections.config_dict.placeholder(str)
  # Its size cap in GB (0 = none): past it, the least recently used entries are removed
  # first, each with a log line. `python -m wacnn_jax cache` lists and clears it.
  config.data.cache_max_gb = 20.0
  config.data.download = True  # let tfds download and prepare when missing
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.max_train_examples = 0  # 0 = all; else a fixed deterministic subset
  config.data.max_test_examples = 0
  # Images of other or mixed sizes are brought to image_size x image_size as they
  # are decoded: resize 'crop' (aspect kept, the centre cut out: torchvision's
  # Resize + CenterCrop) or 'pad' (aspect kept, black borders). Unset: the images
  # must all have one size, and keep it.
  config.data.image_size = ml_collections.config_dict.placeholder(int)
  config.data.resize = "crop"
  # The input's per-channel mean and std: 'auto' (the reference's CIFAR constants for
  # CIFAR-10/100, the training images' own elsewhere), 'cifar' or 'dataset'.
  config.data.normalization = "auto"
  config.data.augment = True  # train augmentation on (False: none)
  # Which: 'auto' (the reference's pad-4 random crop + flip up to 32x32,
  # RandomResizedCrop + flip above), 'pad_crop' or 'random_resized_crop'.
  config.data.augmentation = "auto"
  # A class without images in one split (an empty or misnamed class folder) is
  # refused; True goes on with a warning (tfds.testing.mock_data's random labels).
  config.data.allow_missing_classes = False
  # How images reach the devices (wacnn_jax.data.pipeline_choice): 'memory' (decoded
  # once into host memory and put on every device: CIFAR-sized data, the fastest),
  # 'stream' (read, decoded and augmented batch by batch by worker processes: data
  # larger than memory) or 'auto': memory unless the decoded images would take more
  # than memory_share of the host's memory or of an accelerator's, then stream.
  config.data.pipeline = "auto"
  config.data.memory_share = 0.5
  config.data.workers = 0  # stream worker processes; 0 = one per CPU core, at most 16

  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = 100
  config.num_epochs = 160
  # Train steps per dispatch (lax.scan inside the pmapped function); 0 = auto:
  # a whole epoch on GPU/TPU, one step on CPU (XLA:CPU runs loops slowly).
  config.steps_per_dispatch = 0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.nesterov = False

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "step"  # step | cosine
  config.schedule.boundaries = (81, 121)  # epochs at which the LR is multiplied by decay
  config.schedule.decay = 0.1
  config.schedule.warmup_epochs = 0  # the reference's optional warm-up: 1
  config.schedule.warmup_learning_rate = 0.01

  config.half_precision = False  # bfloat16 compute, float32 parameters
  # JAX's persistent compilation cache: compiled programs are kept in this folder
  # and later runs load them instead of compiling (wacnn_jax.training.compilation_cache);
  # None = ~/.cache/wacnn_jax/xla ($JAX_COMPILATION_CACHE_DIR if set), '' = off.
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  config.checkpoint_every_epochs = 1
  # Also a checkpoint every this many steps inside an epoch (0 = only at epoch ends):
  # a long epoch (a streamed dataset) stopped anywhere resumes at its last such step,
  # on the same batches (the stream's position is saved in the checkpoint).
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 3  # the latest few; the best one is kept as well
  config.log_every_steps = 50  # TensorBoard train-loss scalars
  config.distributed = False  # multi-host: call jax.distributed.initialize()
  # jax.distributed.initialize's arguments; unset = detected from the environment
  # (SLURM, Open MPI, Cloud TPU; JAX_COORDINATOR_ADDRESS for the address).
  # coordinator_address: "host:port" of process 0; process_id: 0 .. num_processes - 1.
  config.coordinator_address = ml_collections.config_dict.placeholder(str)
  config.num_processes = ml_collections.config_dict.placeholder(int)
  config.process_id = ml_collections.config_dict.placeholder(int)
  # Seconds to wait for every process to connect, and without a heartbeat from
  # a process before all of them stop with an error.
  config.initialization_timeout = 300
  config.heartbeat_timeout = 100
  return config
