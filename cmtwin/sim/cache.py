"""The EMS caching pool: prefix-hash KV blocks in the CPUs' DRAM with an SSD tier below, both LRU.

A block is identified by (prefix id, block index): a request reuses the leading blocks of its shared prefix
that are still cached (prefix-hash chains stop at the first miss). Only full blocks of shared prefixes are
tracked (a request's private suffix is never read again by another request in these workloads).
"""

from __future__ import annotations

from collections import OrderedDict


class EMSCache:
    __slots__ = ("dram", "ssd", "dram_blocks", "ssd_blocks", "block_tokens", "evictions", "ssd_evictions")

    def __init__(self, dram_blocks: int, ssd_blocks: int, block_tokens: int):
        self.dram: OrderedDict[int, None] = OrderedDict()
        self.ssd: OrderedDict[int, None] = OrderedDict()
        self.dram_blocks = max(0, int(dram_blocks))
        self.ssd_blocks = max(0, int(ssd_blocks))
        self.block_tokens = block_tokens
        self.evictions = 0
        self.ssd_evictions = 0

    @staticmethod
    def key(prefix: int, index: int) -> int:
        return (prefix << 24) | index

    def lookup(self, prefix: int, nblocks: int) -> tuple[int, int]:
        """Leading blocks of `prefix` found: (in DRAM, promoted from SSD)."""
        dram, ssd = self.dram, self.ssd
        hd = hs = 0
        for i in range(nblocks):
            k = (prefix << 24) | i
            if k in dram:
                dram.move_to_end(k)
                hd += 1
            elif k in ssd:
                del ssd[k]
                self._put(k)
                hs += 1
            else:
                break
        return hd, hs

    def insert(self, prefix: int, first: int, nblocks: int) -> None:
        """Store blocks first..nblocks-1 of `prefix` (just computed by a prefill)."""
        for i in range(first, nblocks):
            k = (prefix << 24) | i
            if k in self.dram:
                self.dram.move_to_end(k)
            else:
                self.ssd.pop(k, None)
                self._put(k)

    def _put(self, k: int) -> None:
        dram = self.dram
        dram[k] = None
        if len(dram) > self.dram_blocks:
            old, _ = dram.popitem(last=False)
            self.evictions += 1
            if self.ssd_blocks:
                self.ssd[old] = None
                if len(self.ssd) > self.ssd_blocks:
                    self.ssd.popitem(last=False)
                    self.ssd_evictions += 1

    def __len__(self) -> int:
        return len(self.dram) + len(self.ssd)
