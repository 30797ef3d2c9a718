"""TPU slice names -> abstract devices (libtpu's topology description; no TPU needed) and per-chip HBM / peak FLOP/s.

Names are Cloud TPU accelerator types: `v4-N` and `v5p-N` count TensorCores (2 per chip), `v5e-N` (alias
`v5litepod-N`) and `v6e-N` count chips; an explicit `v5p:2x4x4` / `v6e:2x4` names the chip grid. Chip figures:
- peak bf16 FLOP/s and HBM as published: cloud.google.com/tpu/docs/v4 (275 TFLOPs, 32 GiB), /v5e (197 TFLOPs, 16 GB),
  /v5p (459 TFLOPs, 95 GB), /v6e (918 TFLOPs, 32 GB);
- `hbm_bytes`, the budget a program is checked against, is what the TPU compiler itself allows per chip: its
  out-of-memory message ("exceeds available HBM (X G)", libtpu 0.0.42.1) reads 31.75 G (v4, megacore_dense),
  15.75 G (v5e), 95.74 G (v5p), 31.25 G (v6e), G = GiB.
The peaks match the compiler's own cost model: its `optimal_seconds` for an 8192^3 bf16 matmul implies 241, 197,
394 and 918 TFLOP/s.
"""

from __future__ import annotations

import dataclasses
import math
import os

from agro_jax.errors import UsageError

GIB = 1 << 30
INSTALL_HINT = "pip install 'agro-jax[tpu]' (or: pip install 'jax[tpu]==0.10.2', which brings libtpu)"


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str  # v4 | v5e | v5p | v6e
    chip_config: str  # libtpu chip_config_name: megacore (one device per chip, both cores) or default
    cores_per_chip: int  # what the -N of v4-N / v5p-N counts
    grid_dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
    hbm_bytes: int  # the compiler's per-chip budget (see the module docstring)
    hbm_published: str
    peak_bf16_flops: float


CHIPS = {
    "v4": Chip("v4", "megacore_dense", 2, 3, int(31.75 * GIB), "32 GiB", 275e12),
    "v5e": Chip("v5e", "default", 1, 2, int(15.75 * GIB), "16 GB", 197e12),
    "v5p": Chip("v5p", "megacore", 2, 3, int(95.74 * GIB), "95 GB", 459e12),
    "v6e": Chip("v6e", "default", 1, 2, int(31.25 * GIB), "32 GB", 918e12),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p"}
# Chip grids of the standard single-slice shapes (Cloud TPU docs' topology tables), by chip count.
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8),
            512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16), 6144: (16, 16, 24)}  # fmt: skip
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. v5p-64
    chip: Chip
    grid: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.grid)

    @property
    def topology_name(self) -> str:
        return f"{self.chip.kind}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        return f"{self.chip.kind}-{self.num_chips * self.chip.cores_per_chip}"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Torus links: 3D slices made of whole 4x4x4 cubes wrap around; 2D slices wrap along a full 16-chip side."""
        g = self.grid + (1,) * (3 - len(self.grid))
        if self.chip.grid_dims == 3:
            return (all(d % 4 == 0 for d in g),) * 3
        return (g[0] == 16, g[1] == 16, False)


def _valid_names() -> str:
    n3 = ", ".join(f"{k}-{c * CHIPS[k].cores_per_chip}" for k in ("v5p",) for c in list(GRIDS_3D)[:5])
    return f"e.g. {n3}, ..., v4-8..v4-8192, v5e-1/4/8/.../256, v6e-1/4/8/.../256, or a grid: v5p:2x4x4, v6e:2x4"


def parse_topology(name: str) -> Topology:
    """`v5p-64` | `v5litepod-8` | `v6e:2x4` -> Topology; a bad name is a UsageError listing the valid forms."""
    raw = str(name).strip().lower()
    sep = ":" if ":" in raw else "-"
    kind, _, size = raw.partition(sep)
    kind = ALIASES.get(kind, kind)
    if kind not in CHIPS or not size:
        raise UsageError(f"--topology {name!r}: unknown TPU slice; {_valid_names()}")
    chip = CHIPS[kind]
    grids = GRIDS_3D if chip.grid_dims == 3 else GRIDS_2D
    if sep == ":":
        try:
            grid = tuple(int(d) for d in size.split("x"))
        except ValueError:
            grid = ()
        if len(grid) != chip.grid_dims or any(d <= 0 for d in grid):
            raise UsageError(f"--topology {name!r}: {kind} grids have {chip.grid_dims} dims like {grids[8]}")
        return Topology(raw, chip, grid)
    if not size.isdigit() or int(size) % chip.cores_per_chip:
        raise UsageError(f"--topology {name!r}: the size of a {kind} slice is a core count; {_valid_names()}")
    chips = int(size) // chip.cores_per_chip
    if chips not in grids:
        sizes = ", ".join(f"{kind}-{c * chip.cores_per_chip}" for c in grids)
        raise UsageError(f"--topology {name!r}: no standard {kind} slice of {chips} chips; one of {sizes}")
    return Topology(raw, chip, grids[chips])


def require_libtpu() -> None:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise UsageError(f"planning for TPUs needs libtpu, which is not installed: {INSTALL_HINT}") from None


def quiet_libtpu_env(topology: Topology) -> None:
    """Env vars read when libtpu loads (set only if absent): without TPU_WORKER_HOSTNAMES / TPU_ACCELERATOR_TYPE it
    prints host-discovery warnings on a machine without TPUs (the topology is given explicitly, so their values do not
    change what is compiled); ALLOW_MULTIPLE_LIBTPU_LOAD lets two planning processes run at once (each would
    otherwise need /tmp/libtpu_lockfile)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: Topology) -> list:
    """The slice's abstract TPU devices (one per chip), usable in a Mesh for jit(...).lower(...).compile()."""
    from jax.experimental import topologies

    require_libtpu()
    quiet_libtpu_env(topology)
    # chips per host: 2x2x1 (a v4/v5p host; v5e/v6e hosts hold 4 or 8), clipped to grids smaller than that (v5p:2x1x1)
    grid = topology.grid + (1,) * (3 - len(topology.grid))
    bounds = tuple(min(g, b) for g, b in zip(grid, (2, 2, 1)))
    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology.topology_name,
        chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=bounds,
        num_slices=1,
        wrap=topology.wrap,
    )
    return list(desc.devices)
