"""A CIFAR backbone given large images gets a one-line hint towards the ImageNet layouts."""

from wacnn_jax.training import epochs


def test_large_images_on_a_cifar_backbone_get_a_hint():
  hint = epochs.large_image_hint("resnet18", (128, 160, 3))
  assert hint.startswith("resnet18 is a CIFAR backbone") and "\n" not in hint
  assert "resnet18_imagenet" in hint and "mobilenetv2_imagenet" in hint and "16x" in hint
  assert epochs.large_image_hint("resnet18", (64, 64, 3)) is None
  assert epochs.large_image_hint("resnet50_imagenet", (224, 224, 3)) is None
