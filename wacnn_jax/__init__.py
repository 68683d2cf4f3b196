"""wacnn_jax: Wavelet-Attention CNNs (WA-CNN, arXiv 2201.09271) in JAX/Flax.

Models: `wavelets` (the 2-D DWT/IDWT with pywt's filters: a strided
depthwise convolution, or for two-tap wavelets such as haar an equal
space-to-depth and 4x4 mix), `layers` (PyTorch-equivalent conv/BatchNorm/Dense),
`attention` (Wavelet Attention, the SE/CBAM/ECA/GC comparison modules and
`AttentionSpec`), `models` (`create_model`: the backbones, looked up by name).
Training: `input_pipeline`, `parallel`, `steps`, `epochs`, `train`, `metrics`,
`checkpointing`. After training: `restore`, `evaluate`, `report`,
`visualize`, `reproduce`. The command line: `cli` (`python -m wacnn_jax`).
Nothing heavy is imported here.
"""

__version__ = "0.1.0"
