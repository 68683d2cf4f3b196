"""The ImageNet-layout backbones against torchvision's models: parameter counts, and torchvision's
weights copied in (`models.torchvision_weights`) giving torchvision's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wacnn_jax import models
from wacnn_jax.models import torchvision_weights

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ARCHS = {"resnet18_imagenet": "resnet18", "resnet34_imagenet": "resnet34",
         "resnet50_imagenet": "resnet50", "mobilenetv2_imagenet": "mobilenet_v2"}


def _torchvision_model(name: str, num_classes: int):
  """torchvision's network with its own random init, and BatchNorm statistics that are not
  the identity (so that copying them is tested too); in evaluation mode."""
  torch.manual_seed(0)
  net = getattr(torchvision.models, name)(num_classes=num_classes)
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        shape = module.running_mean.shape
        module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
        module.weight.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
        module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
  return net.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_is_torchvision_s(arch):
  model = models.create_model(arch, num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  theirs = sum(p.numel() for p in getattr(torchvision.models, ARCHS[arch])().parameters())
  assert ours == theirs


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_weights_give_torchvision_s_logits(arch):
  """Eval mode, 64x64 images (the layout downsamples by 32: a 2x2 map before the pool)."""
  net = _torchvision_model(ARCHS[arch], num_classes=10)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  model = models.create_model(arch, num_classes=10)
  variables = torchvision_weights.variables_from_torchvision(model, net.state_dict())
  ours = np.asarray(jax.jit(model.apply)(variables, images))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_a_state_dict_that_does_not_fit_is_named():
  state = _torchvision_model("resnet18", num_classes=10).state_dict()
  with pytest.raises(ValueError, match=r"fc.weight' \(10, 512\) does not fit "
                                       r"params/classifier/kernel \(512, 7\)"):
    torchvision_weights.variables_from_torchvision(
        models.create_model("resnet18_imagenet", num_classes=7), state)
  with pytest.raises(ValueError, match="has nothing for params/stage1_block0/attention"):
    torchvision_weights.variables_from_torchvision(
        models.create_model("resnet18_imagenet", num_classes=10, attention="se"), state)
  with pytest.raises(ValueError, match="no torchvision counterpart"):
    torchvision_weights.variables_from_torchvision(
        models.create_model("resnet18", num_classes=10), state)
