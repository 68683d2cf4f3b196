"""The data layer: every source read into host memory, checked, cached, and augmented on device.

    pipeline        load(config.data) -> Dataset: the one entry, whatever the source
    dataset         Dataset, Split (uint8 NHWC images, int32 labels), DatasetError
    image_folders   <root>/<split>/<class>/*.jpg|png folders and tar archives of them
    cifar_archives  the official CIFAR-10/100 archives, python and binary versions
    tar_archives    tar archives read whole, or refused
    tfds_datasets   tensorflow-datasets by name
    cache           decoded image folders kept on disk, read back in a fraction of a second
    checks          every source checked against its promise, and summarised (dataset.json)
    transforms      the reference's augmentation and normalisation, inside the jitted steps

It imports only the layers below it: `wacnn_jax.files` (and, where a reader needs them,
the building blocks and models); nothing of the trainer, pretrained or tools.
"""
