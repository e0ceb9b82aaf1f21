"""The own-loop recipe the README shows, shared by the tests that drive a Sieve by hand."""

from __future__ import annotations

from sievetrain import Sieve


def own_loop(sieve: Sieve, model, optimizer, loader, dataset, epochs, *, stop_after=None):
    """Train ``epochs`` through ``sieve``; returns the indices of every trained batch.
    With ``stop_after``, the last epoch stops after that many loaded batches, mid-epoch
    (no flush)."""
    trained = []
    for epoch in epochs:
        sieve.begin_epoch(epoch, model, dataset)
        if stop_after is not None and epoch == epochs[-1]:
            loaded = zip(range(stop_after), loader, strict=False)
            chosen = (sieve.select(batch, model) for _, batch in loaded)
            batches = (batch for batch in chosen if batch is not None)
        else:
            batches = sieve.batches(loader, model)
        for x, y, idx in batches:
            loss = sieve.loss(model(x), y, idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trained.append(idx.tolist())
    return trained
