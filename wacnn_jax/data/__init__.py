"""The data layer: every source read, checked and summarised; held in memory, or streamed.

    pipeline              load(config.data) -> Dataset: the one entry, whatever the source
    pipeline_choice       memory or stream (data.pipeline), chosen once
    dataset               Dataset, Split (uint8 NHWC images, int32 labels), DatasetError
    folder_listings       which images a folder or archive holds, and their classes
    image_decoding        image files decoded into 8-bit RGB by Pillow, or refused by name
    resizing              images brought to data.image_size as they are decoded
    normalization         the input's per-channel mean and std
    checks                every source checked against its promise, and summarised
  the memory pipeline:
    image_folders         folders and tar archives of them, decoded into memory
    cifar_archives        the official CIFAR-10/100 archives, python and binary versions
    tar_archives          tar archives read whole (or indexed), or refused
    tfds_datasets         tensorflow-datasets by name
    cache                 decoded image folders kept on disk, read back in a fraction of a second
    transforms            the reference's augmentation and normalisation, in the jitted steps
  the stream pipeline:
    streaming             StreamSplits: listed up front, each image read when a batch needs it
    stream_sources        random-access record sources: files, tar members, arrays, tfds
    uncompressed_archives a .tar.gz decompressed once into the cache, for random access
    batch_plans           which images each process reads at each step (a pure function)
    stream_loaders        the batches, made by Grain worker processes
    host_augmentation     the train augmentation in NumPy and Pillow, in the workers

It imports only the layers below it: `wacnn_jax.files` (and, where a reader needs them,
the building blocks and models); nothing of the trainer, pretrained or tools.
"""
