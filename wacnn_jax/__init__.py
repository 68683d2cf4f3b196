"""wacnn_jax: Wavelet-Attention CNNs (WA-CNN, arXiv 2201.09271) in JAX/Flax.

Submodules: `wavelets` (DWT/IDWT as strided convolutions), `attention`
(Wavelet Attention and the SE/CBAM/ECA/GC comparison modules), `models`
(`create_model` registry). Nothing heavy is imported here.
"""

__version__ = "0.1.0"
