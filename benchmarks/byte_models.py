"""Byte models of the normalisation kernels: how many bytes a pass must move.

Batch and layer norm are memory-bound, so a kernel's speed is judged by the bandwidth it
reaches under a stated model of its traffic: ``passes * numel * element_size`` bytes, where a
pass reads or writes every element of one tensor once. Reductions' tiny outputs (per-channel or
per-row statistics, parameter gradients) are not counted.

| op | passes | what moves | float32 bytes/element |
|---|---|---|---|
| BN training forward | 3 | read x (statistics), read x, write y | 12 |
| BN training backward | 5 | read x, dy (sums); read x, dy; write dx | 20 |
| BN inference | 2 | read x, write y | 8 |
| LN forward | 2 | read x, write y | 8 |
| LN backward | 3 | read x, dy; write dx | 12 |

torch eager's LN backward moves 5 passes (20 B/element in float32); the table models the
least traffic, the bar a fused kernel is held to.
"""

from dataclasses import dataclass

__all__ = ["BYTE_MODELS", "ByteModel", "byte_model", "effective_gbps"]


@dataclass(frozen=True)
class ByteModel:
    """``passes`` full sweeps over a tensor of the input's shape and dtype."""

    passes: int
    traffic: str

    def bytes_moved(self, numel: int, element_size: int) -> int:
        """Bytes the op moves for ``numel`` elements of ``element_size`` bytes."""
        if numel < 0 or element_size <= 0:
            raise ValueError(f"need numel >= 0 and element_size > 0, got {numel}, {element_size}")
        return self.passes * numel * element_size

    def describe(self, element_size: int) -> str:
        """E.g. ``"3 passes = 12 B/elem"`` for float32."""
        return f"{self.passes} passes = {self.passes * element_size} B/elem"


BYTE_MODELS = {
    ("bn", "forward"): ByteModel(3, "read x (statistics), read x, write y"),
    ("bn", "backward"): ByteModel(5, "read x, dy (sums); read x, dy; write dx"),
    ("bn", "fwd+bwd"): ByteModel(8, "forward's 3 passes plus backward's 5"),
    ("bn", "inference"): ByteModel(2, "read x, write y"),
    ("ln", "forward"): ByteModel(2, "read x, write y"),
    ("ln", "backward"): ByteModel(3, "read x, dy; write dx"),
}


def byte_model(op: str, direction: str) -> ByteModel:
    """The model of ``op`` (``"bn"``/``"ln"``) in ``direction`` (``"forward"``, ...)."""
    try:
        return BYTE_MODELS[(op, direction)]
    except KeyError:
        known = ", ".join(f"{o} {d}" for o, d in BYTE_MODELS)
        raise ValueError(f"no byte model for {op} {direction}; known: {known}") from None


def effective_gbps(bytes_moved: int, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) that ``bytes_moved`` in ``seconds`` implies."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return bytes_moved / seconds / 1e9
