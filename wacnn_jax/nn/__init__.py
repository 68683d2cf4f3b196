"""The building blocks: pure Flax modules and functions on NHWC arrays, for any network.

    wavelets        dwt2 / idwt2 (pywt's filters; separable filter banks or a strided
                    depthwise convolution, per backend), DWT2D / IDWT2D modules
    separable_dwt   two-channel filter banks along one axis (analysis, synthesis), each
                    the other's VJP
    depthwise       depthwise 2-D convolutions as shifted multiply-adds with their own VJP
    layers          PyTorch-equivalent Conv / BatchNorm / Dense and their initialisers
    attention       WaveletAttention and the comparison modules SE, CBAM, ECA, GC
    attention_spec  the attention modules by name: AttentionSpec strings such as
                    "wa(wavelet='db2')", and the registry behind them

The bottom layer of wacnn_jax: it imports Flax, JAX, numpy and PyWavelets
only, nothing of wacnn_jax outside this folder; no configs, no files, no
logging. Arrays are NHWC; parameters are float32 whatever the compute dtype.
"""
