"""What a run found: ns per operation of each cell, its ratio to the floor, and why a cell has none."""

from dataclasses import dataclass
from typing import Any

from catga._bench._cell import MEASURED, Kind

__all__ = ["CellResult", "ScenarioResult"]


@dataclass(frozen=True, slots=True)
class CellResult:
    name: str
    kind: Kind
    status: str  # `_cell.MEASURED` ("ok"), "not installed", "n/a" or "unavailable"
    ns_per_op: float | None = None  # best repeat, net of the empty loop
    ratio: float | None = None  # to the scenario's floor
    n: int | None = None  # operations per repeat
    repeats: int | None = None
    reason: str = ""
    version: str | None = None
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.status == MEASURED

    def as_dict(self) -> dict[str, Any]:
        return {
            "cell": self.name,
            "kind": self.kind,
            "status": self.status,
            "ns_per_op": None if self.ns_per_op is None else round(self.ns_per_op, 1),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "n": self.n,
            "repeats": self.repeats,
            "reason": self.reason,
            "version": self.version,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    floor: str  # what the floor does
    loop_ns_per_op: float  # the empty loop's cost, subtracted from every cell
    cells: tuple[CellResult, ...]

    def cell(self, name: str) -> CellResult:
        return next(cell for cell in self.cells if cell.name == name)

    @property
    def fastest_peer(self) -> CellResult | None:
        """The measured third-party mediator with the lowest ns/op (catga's drop-in is not a peer)."""
        peers = [cell for cell in self.cells if cell.kind == "peer" and cell.ns_per_op is not None]
        return min(peers, key=lambda cell: cell.ns_per_op or 0.0, default=None)

    @property
    def rust_vs_fastest_peer(self) -> float | None:
        """How many times faster catga on its Rust core is than the fastest peer, if both ran."""
        rust = next((c for c in self.cells if c.name == "catga (Rust core)" and c.ns_per_op), None)
        peer = self.fastest_peer
        if rust is None or peer is None or not rust.ns_per_op or peer.ns_per_op is None:
            return None
        return peer.ns_per_op / rust.ns_per_op

    def as_dict(self) -> dict[str, Any]:
        peer = self.fastest_peer
        speedup = self.rust_vs_fastest_peer
        return {
            "scenario": self.scenario,
            "floor": self.floor,
            "loop_ns_per_op": round(self.loop_ns_per_op, 1),
            "fastest_peer": None if peer is None else peer.name,
            "rust_vs_fastest_peer": None if speedup is None else round(speedup, 2),
            "cells": [cell.as_dict() for cell in self.cells],
        }
