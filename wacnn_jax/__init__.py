"""wacnn_jax: Wavelet-Attention CNNs (WA-CNN, arXiv 2201.09271) in JAX/Flax.

Submodules: `wavelets` (DWT/IDWT as strided convolutions), `layers`
(PyTorch-equivalent conv/BatchNorm/Dense), `attention` (Wavelet Attention, the
SE/CBAM/ECA/GC comparison modules and `AttentionSpec`), `models`
(`create_model`: the backbones by name). Nothing heavy is imported here.
"""

__version__ = "0.1.0"
