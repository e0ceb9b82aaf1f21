"""MNIST-1D in a Hugging Face accelerate loop: a fresh random 30% of the data each epoch
(Soft Random Sampling), the hardest half of each batch backpropagated (SIFT), and
StochGradAdam; the run resumes exactly from its checkpoint.

    python examples/accelerate_mnist1d.py
    torchrun --standalone --nproc_per_node=2 examples/accelerate_mnist1d.py
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_mnist1d.py

``--checkpoint DIR`` saves the run's state there after each epoch; ``--resume`` starts from
it (with the same number of processes). Needs ``pip install 'sievetrain[hf]'``; the
recipe is explained in docs/integrations/accelerate.md.
"""

import argparse

import torch
from accelerate import Accelerator

from sievetrain import Sieve
from sievetrain.data import IndexedDataset, load_dataset
from sievetrain.integrations.accelerate import prepare_loader, register_for_checkpointing
from sievetrain.models import build_model
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import SIFT


def main(epochs: int, checkpoint: str | None, resume: bool) -> None:
    # cpu=True without a GPU, or accelerate does not treat torchrun's processes as one job.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data = load_dataset("mnist1d")
    torch.manual_seed(0)  # the model's initialisation, the same on every process
    model = build_model("mnist1d-cnn", num_classes=10, input_shape=data.input_shape)
    optimizer = StochGradAdam(model.parameters(), lr=3e-3, sampling_rate=0.8, seed=0)
    model, optimizer = accelerator.prepare(model, optimizer)

    sampler = SoftRandomSampler(len(data.train), 0.3, seed=0)  # shards per process
    loader = prepare_loader(accelerator, IndexedDataset(data.train), 32, sampler=sampler)
    sieve = Sieve(sampler, SIFT(0.5, num_classes=10))  # the step protocol
    register_for_checkpointing(accelerator, sieve)  # SIFT's exit head is trained: save it
    if resume:
        accelerator.load_state(checkpoint)  # model, optimizer, loader position, sieve

    for epoch in range(sampler.epoch, epochs):  # the epoch saved, or 0
        sieve.begin_epoch(epoch, model, data.train)  # the sampler's epoch, the selector's
        for x, y, idx in sieve.batches(loader, model):  # the samples SIFT keeps
            loss = sieve.loss(model(x), y, idx)  # cross-entropy with the sampler's weights
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
        if checkpoint:
            accelerator.save_state(checkpoint)  # mid-epoch too: after any optimizer step

    net = accelerator.unwrap_model(model).eval()  # every process holds the same weights
    x, y = (t.to(accelerator.device) for t in data.test.tensors)
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    mine = torch.tensor(sieve.samples_backpropagated, device=accelerator.device)
    total = accelerator.reduce(mine, "sum").item()  # over every process
    accelerator.print(f"test accuracy {accuracy:.3f}, samples backpropagated {total}")
    accelerator.end_training()  # closes the process group: an open one can abort at exit


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--checkpoint", help="folder to save the state to after each epoch")
    parser.add_argument("--resume", action="store_true", help="start from --checkpoint's state")
    args = parser.parse_args()
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint")
    main(args.epochs, args.checkpoint, args.resume)
