"""KV blocks gathered for a migration, landing in host memory while the engine steps on.

On a GPU the source gathers a stage's blocks on the device (one `index_select` per layer, a
staging copy the later steps cannot overwrite: they run after it on the same stream) and copies
them into pinned host memory without blocking; the engine thread goes back to stepping at once.
Whoever reads the bytes waits first: the transport pickles a `StagedKV` (Ray's object store,
from the actor's thread) or the target's runner writes it (in process), and either waits for the
copy's event. On the CPU the copy is done when `read` returns, and there is no event.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from shunter.replica.host_fence import Event


class StagedKV(list):
    """Per layer (k, v) host tensors of some blocks, maybe still landing: a list once `wait`ed.
    Pickles (for a transport) as a plain list, after waiting."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], landed: Event | None = None) -> None:
        super().__init__(layers)
        self._landed = landed

    def wait(self) -> StagedKV:
        if self._landed is not None:
            self._landed.synchronize()
            self._landed = None
        return self

    def __reduce__(self):
        return list, (list(self.wait()),)


def read(kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]], block_ids: Sequence[int]) -> StagedKV:
    """The KV of `block_ids` from every layer's caches, into host memory (asynchronously on CUDA)."""
    if not kv_caches or kv_caches[0][0].device.type != "cuda":
        ids = torch.tensor(list(block_ids), dtype=torch.long)
        return StagedKV([(k[ids], v[ids]) for k, v in kv_caches])
    device = kv_caches[0][0].device
    ids = torch.tensor(list(block_ids), dtype=torch.long, device=device)
    layers = []
    for k, v in kv_caches:
        pair = []
        for cache in (k, v):
            host = torch.empty((len(block_ids), *cache.shape[1:]), dtype=cache.dtype, pin_memory=True)
            host.copy_(cache.index_select(0, ids), non_blocking=True)
            pair.append(host)
        layers.append((pair[0], pair[1]))
    event = torch.cuda.Event()
    event.record()  # after the copies, on the stream they were issued on
    return StagedKV(layers, event)


def landed(kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
    """`kv` ready to read: a `StagedKV` waited for, anything else as it is."""
    return kv.wait() if isinstance(kv, StagedKV) else kv
