"""Fashion-MNIST with PyTorch Lightning and sievetrain: a fresh random 30 % of the data
each epoch (Soft Random Sampling), the harder half of each batch backpropagated (SIFT),
and StochGradAdam. On the CPU, in one process or several:

    python examples/lightning_fashion_mnist.py
    torchrun --standalone --nproc_per_node=2 examples/lightning_fashion_mnist.py
"""

import os

import lightning as L
import torch

from sievetrain.data import IndexedDataset, load_dataset
from sievetrain.integrations.lightning import SieveCallback
from sievetrain.models import build_model
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import SIFT

EPOCHS, BATCH = 5, 128  # BATCH: samples per optimizer step, all ranks together


class FashionClassifier(L.LightningModule):
    def __init__(self, data, sieve):
        super().__init__()
        self.data, self.sieve = data, sieve
        self.net = build_model("fashion-cnn", num_classes=10, input_shape=data.input_shape)

    def train_dataloader(self):  # the sampler shards over the ranks at its first epoch
        sampler = SoftRandomSampler(len(self.data.train), 0.3, seed=0)  # a fresh 30 % each epoch
        dataset = IndexedDataset(self.data.train)  # batches of (x, y, idx)
        return self.sieve.dataloader(dataset, BATCH // self.trainer.world_size, sampler=sampler)

    def training_step(self, batch, batch_idx):
        batch = self.sieve.select(batch, self.net)  # the half SIFT's early exit finds hardest
        if batch is None:  # nothing to train in this step (a gathering selector)
            return None
        x, y, idx = batch
        return self.sieve.loss(self.net(x), y, idx)

    def configure_optimizers(self):  # Adam on a fresh 80 % of the gradient entries each step
        return StochGradAdam(self.parameters(), lr=3e-3, sampling_rate=0.8)


data = load_dataset("fashion-mnist", train_size=6000, test_size=2000)
torch.manual_seed(0)  # the model's initial weights
sieve = SieveCallback(SIFT(0.5, num_classes=10))  # runs a sievetrain.Sieve in Lightning
model = FashionClassifier(data, sieve)
devices = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes (CPU default: 1)
trainer = L.Trainer(
    max_epochs=EPOCHS,
    accelerator="cpu",
    devices=devices,
    callbacks=[sieve],
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    enable_checkpointing=False,  # no files here; with checkpoints, fit(ckpt_path=...) resumes
)
trainer.fit(model)

model.net.eval()
with torch.no_grad():
    x, y = data.test.tensors
    accuracy = (model.net(x).argmax(dim=1) == y).float().mean().item()
backpropagated = sieve.samples_backpropagated * trainer.world_size  # every rank as many
if trainer.is_global_zero:
    print(f"test accuracy {accuracy:.1%} after {trainer.current_epoch} epochs")
    print(f"samples backpropagated: {backpropagated} (full data: {EPOCHS * len(data.train)})")
