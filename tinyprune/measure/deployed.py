"""What a model costs as firmware on the target: the one set of numbers every decision reads.

Policy (one per stage, computed once in ``measure``; the console, the report, ``--fit``,
``check``, ``sweep`` and the LUT deployment all read this object, none recomputes it):

* **flash** = the model + the runtime code the model's op set links: TFLM core, the kernels of
  its ops with the CMSIS-NN functions they call (the DECODE kernel for a LUT model), libc,
  startup and a minimal main, as a release build for the target's core links them
  (``tinyprune.measure.firmware``);
* **RAM** = the TFLM arena (measured in the real interpreter for a TFLite model) + what the
  reference firmware needs outside it (stack, TFLM's and libc's static data). A LUT model's
  decoded weights are in the arena, or in the target's separate decompression region when it has
  one and they fit there (then counted against that region, not ``ram_bytes``);
* **instructions** of TFLM + CMSIS-NN, predicted per operator for the core
  (``tinyprune.measure.instructions``); **cycles** = instructions x the runtime's cycles per
  instruction on the core (``tinyprune.measure.runtimes``); **ms** = cycles / the target's clock;
* **energy** = cycles x the target board's pJ per cycle;
* **fits** = flash <= the target's flash, RAM <= its RAM, decoded weights <= its decompression
  region; nothing else.

Time and energy carry a band with its stated coverage (an 80 % interval, checked on boards left
out of the fit); flash and RAM are exact sums of measured parts plus one fitted constant each.
A float model (PyTorch, ONNX) is costed as its int8 conversion: one byte per parameter and the
planned activation peak at one byte per element, an estimate marked as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tinyprune.measure import firmware, instructions, runtimes

POLICY = ("flash: model + TFLM core + the kernels of the model's ops (CMSIS-NN) + libc/startup/main, release "
          "build for the core; RAM: TFLM arena + stack and static data outside it; time: predicted TFLM + CMSIS-NN "
          "instructions x the runtime's cycles per instruction / clock; energy: cycles x the board's pJ/cycle")


@dataclass(frozen=True)
class Band:
    """A predicted value and its interval (``coverage`` of outcomes fall inside, as checked)."""

    value: float
    low: float
    high: float

    @classmethod
    def around(cls, value: float, rel: float) -> Band:
        return cls(float(value), float(value) * (1 - rel), float(value) * (1 + rel))

    def scaled(self, k: float) -> Band:
        return Band(self.value * k, self.low * k, self.high * k)


@dataclass(frozen=True)
class DeployedCosts:
    basis: str  # what was costed: "int8 TFLite model" or a float model as its int8 conversion
    core: str
    runtime: str
    runtime_label: str
    clock_hz: int
    coverage: float
    model_bytes: int
    code_bytes: int
    flash_bytes: int
    arena_bytes: int
    arena_source: str
    outside_arena_bytes: int
    decompression_bytes: int | None  # decoded weights in the target's separate region; None: none there
    ram_bytes: int
    instructions: int
    cycles: Band
    ms: Band
    energy_uj: Band
    pj_per_cycle: Band
    energy_source: str
    flash_limit: int
    ram_limit: int
    decompression_limit: int
    code: dict = field(default_factory=dict)  # tflm, cmsis_nn, libc_startup_app, per_op, estimated_ops
    notes: tuple[str, ...] = ()
    policy: str = POLICY
    npu: dict | None = None  # an Ethos-U target: Vela's compilation and its per-operator cycles

    @property
    def fits_flash(self) -> bool:
        return self.flash_bytes <= self.flash_limit

    @property
    def fits_ram(self) -> bool:
        return self.ram_bytes <= self.ram_limit and (self.decompression_bytes or 0) <= self.decompression_limit

    @property
    def fits(self) -> bool:
        return self.fits_flash and self.fits_ram

    def misses(self) -> list[str]:
        out = []
        if not self.fits_flash:
            out.append(f"flash {self.flash_bytes:,} B > {self.flash_limit:,} B")
        if self.ram_bytes > self.ram_limit:
            out.append(f"RAM {self.ram_bytes:,} B > {self.ram_limit:,} B")
        if (self.decompression_bytes or 0) > self.decompression_limit:
            out.append(f"decoded weights {self.decompression_bytes:,} B > {self.decompression_limit:,} B region")
        return out

    def lines(self, target_name: str) -> list[str]:
        """The costs in the words the headline, ``measure`` and ``check`` all use."""
        def kib(n) -> str:
            return f"{n / 1024:.1f} KiB"

        ms, uj = self.ms, self.energy_uj
        region = (f", decoded weights {kib(self.decompression_bytes)} in the separate region"
                  if self.decompression_bytes else "")
        return [f"On {target_name} ({self.runtime_label}, {self.core}): flash {kib(self.flash_bytes)} of "
                f"{kib(self.flash_limit)} (model {kib(self.model_bytes)} + runtime code {kib(self.code_bytes)}), RAM "
                f"{kib(self.ram_bytes)} of {kib(self.ram_limit)} (arena {kib(self.arena_bytes)} + stack and static "
                f"data {kib(self.outside_arena_bytes)}){region}.",
                f"Predicted at {self.clock_hz / 1e6:g} MHz: {ms.value:.3g} ms ({ms.low:.3g}-{ms.high:.3g}), "
                f"{uj.value:,.1f} uJ ({uj.low:,.1f}-{uj.high:,.1f}) per inference, {int(100 * self.coverage)} % "
                f"intervals; " + (f"{self.npu['npu_cycles']:,} NPU cycles (Vela), {self.instructions:,} host "
                                  f"instructions for {len(self.npu['cpu_ops'])} CPU ops." if self.npu else
                                  f"{self.instructions / 1e6:.2f} M instructions."),
                *(f"Note: {n}." for n in self.notes)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["fits"] = {"flash": self.fits_flash, "ram": self.fits_ram, "all": self.fits}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DeployedCosts:
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("cycles", "ms", "energy_uj", "pj_per_cycle"):
            kw[k] = Band(**d[k])
        kw["notes"] = tuple(d.get("notes") or ())
        return cls(**kw)


def of(measurement: dict) -> DeployedCosts | None:
    """The deployed costs a measurement (``measure``'s dict, or a stage's ``details["measure"]``) holds."""
    d = (measurement or {}).get("deployed")
    return DeployedCosts.from_dict(d) if d else None


def _instruction_core(target) -> str:
    """The core whose instruction counts and code sizes price ``target``."""
    core = runtimes.core_of(target)
    return runtimes.INSTRUCTIONS_OF.get(core, core)


def layer_instructions(layers: list[dict], target, channels_last: bool) -> tuple[list[float], str, list[str]]:
    icore = _instruction_core(target)
    per, stand_ins = instructions.predict_layers(layers, icore, channels_last)
    return per, icore, stand_ins


def _groups(layers: list[dict], per: list[float]) -> dict[str, float]:
    """Instructions per op group (conv, dw, fc, other): what a runtime's factors apply to."""
    groups: dict[str, float] = {}
    for layer, n in zip(layers, per):
        groups[instructions.group(layer)] = groups.get(instructions.group(layer), 0.0) + n
    return groups


def _energy(cycles: Band, target) -> tuple[Band, Band]:
    """(energy in uJ, the board's pJ per cycle): cycles x pJ/cycle, the band the product of both."""
    pj = Band(target.pj_per_cycle, target.pj_per_cycle_low, target.pj_per_cycle_high)
    return Band(cycles.value * pj.value * 1e-6, cycles.low * pj.low * 1e-6, cycles.high * pj.high * 1e-6), pj


_CODE_KEYS = ("tflm", "cmsis_nn", "libc_startup_app", "unregistered_credit", "per_op", "estimated_ops")


def compute(layers: list[dict], target, *, channels_last: bool, model_bytes: int, arena_bytes: int,
            arena_source: str, basis: str, decompression_bytes: int | None = None,
            runtime: str | None = None) -> DeployedCosts:
    """The deployed costs of one model (its layer records, as ``tinyprune.measure.macs`` makes them)
    on ``target``; writes each layer's ``instructions``, ``cycles`` and ``latency_us`` into its record."""
    core = runtimes.core_of(target)
    runtime = runtime or target.runtime or runtimes.DEFAULT_RUNTIME
    per, icore, stand_ins = layer_instructions(layers, target, channels_last)
    cyc = runtimes.predict(_groups(layers, per), runtime, core, icore)
    notes = list(cyc.notes)
    if getattr(target, "runtime_choice", "") and "->" in target.runtime_choice and runtime == target.runtime:
        notes.insert(0, target.runtime_choice)
    if not runtimes.known_core(target):
        notes.append(f"{target.name} is not a core the calibration has: priced as a {core}, band twice as wide")
        cyc_band = cyc.band * 2
    else:
        cyc_band = cyc.band
    if stand_ins:
        notes.append(f"no calibration for {', '.join(stand_ins)}: priced by a similar op's model")
    total = sum(per) or 1.0
    for layer, n in zip(layers, per):
        layer["instructions"] = int(round(n))
        layer["cycles"] = round(cyc.cycles * n / total, 1)
        layer["latency_us"] = round(cyc.cycles * n / total / target.clock_hz * 1e6, 3)
    shapes = [instructions.op_shape(layer, channels_last) for layer in layers]
    code = firmware.code_bytes([s.op for s in shapes if s is not None], icore)
    if code["estimated_ops"]:
        notes.append(f"kernel code of {', '.join(code['estimated_ops'])} estimated (not in the calibration)")
    outside = ram_outside_arena()
    cycles = Band.around(cyc.cycles, cyc_band)
    ms = cycles.scaled(1e3 / target.clock_hz)
    energy, pj = _energy(cycles, target)
    label = instructions.table()["calibration"]["label"] if runtime == runtimes.DEFAULT_RUNTIME else runtime
    return DeployedCosts(
        basis=basis, core=core, runtime=runtime, runtime_label=label, clock_hz=int(target.clock_hz),
        coverage=cyc.coverage, model_bytes=int(model_bytes), code_bytes=int(code["total"]),
        flash_bytes=int(model_bytes) + int(code["total"]), arena_bytes=int(arena_bytes), arena_source=arena_source,
        outside_arena_bytes=outside, decompression_bytes=decompression_bytes,
        ram_bytes=int(arena_bytes) + outside, instructions=int(round(sum(per))), cycles=cycles, ms=ms,
        energy_uj=energy, pj_per_cycle=pj, energy_source=target.energy_source, flash_limit=int(target.flash_bytes),
        ram_limit=int(target.ram_bytes), decompression_limit=int(target.decompression_ram_bytes),
        code={k: code[k] for k in _CODE_KEYS},
        notes=tuple(notes))


def firmware_flash(model_bytes: bytes, target) -> int:
    """Flash of the firmware that runs the TFLite ``model_bytes`` on ``target`` (model + runtime code),
    under the same policy as ``compute``."""
    from tinyprune.measure.graph import read_graph

    ops = [op.op for op in read_graph(model_bytes).ops]
    return len(model_bytes) + firmware.code_bytes(ops, _instruction_core(target))["total"]


def decode_code_bytes(ops, target) -> int:
    """What registering TFLM's DECODE kernel adds to the firmware of a model with ``ops``."""
    icore = _instruction_core(target)
    return firmware.code_bytes([*ops, "TFLM_DECODE"], icore)["total"] - firmware.code_bytes(ops, icore)["total"]


def ram_outside_arena() -> int:
    return int(instructions.table()["firmware"]["ram_outside_arena_bytes"])


NPU_BAND = 0.25  # Vela's cycles are a model: no hardware here to check them against, so a nominal band


def compute_npu(model_bytes: bytes, target, *, basis: str = "int8 TFLite model compiled by Vela") -> DeployedCosts:
    """The deployed costs on an Ethos-U target: the Vela-compiled model in flash, its SRAM as the
    arena, NPU cycles from Vela's performance model plus the host core's cycles for what stays on
    the CPU (priced as on the host core's own target)."""
    from tinyprune.measure import npu
    from tinyprune.measure.macs import tflite_layers

    vela = npu.compile_model(model_bytes, target)
    cpu_layers = [layer for layer in tflite_layers(vela.model) if layer["op"] != "ethos-u"]
    core = runtimes.core_of(target)
    per, _, stand_ins = layer_instructions(cpu_layers, target, channels_last=True)
    cpu = runtimes.predict(_groups(cpu_layers, per), runtimes.DEFAULT_RUNTIME, core, core) if per else None
    cpu_s = (cpu.cycles / target.clock_hz) if cpu else 0.0
    npu_s = vela.npu_cycles / vela.npu_clock_hz
    seconds = npu_s + cpu_s
    # the interval: Vela's nominal band on the NPU's share, the CPU model's own on the rest
    low = npu_s * (1 - NPU_BAND) + cpu_s * (1 - (cpu.band if cpu else 0))
    high = npu_s * (1 + NPU_BAND) + cpu_s * (1 + (cpu.band if cpu else 0))
    cycles = Band(seconds * vela.npu_clock_hz, low * vela.npu_clock_hz, high * vela.npu_clock_hz)  # NPU clock cycles
    ms = Band(seconds * 1e3, low * 1e3, high * 1e3)
    energy, pj = _energy(cycles, target)
    code = firmware.code_bytes([layer["op"] for layer in cpu_layers] + ["ethos-u"], core)
    notes = [f"NPU cycles, SRAM and flash from Vela ({vela.accelerator}, {vela.system_config}, {vela.memory_mode}): "
             "a performance model, not measured on hardware; band +-25 % nominal",
             "the Ethos-U driver's code size is not in the calibration: estimated"]
    if vela.cpu_ops:
        notes.append(f"on the host {core}: {', '.join(sorted(set(vela.cpu_ops)))}")
    if stand_ins:
        notes.append(f"no calibration for {', '.join(stand_ins)}: priced by a similar op's model")
    from tinyprune.export.firmware import arena_size

    outside, arena = ram_outside_arena(), arena_size(vela.sram_bytes)  # reserved as kTensorArenaSize, as on a CPU
    return DeployedCosts(
        basis=basis, core=core, runtime=f"vela {vela.accelerator}", runtime_label=f"Ethos-U ({vela.accelerator}, Vela)",
        clock_hz=int(vela.npu_clock_hz), coverage=float(instructions.table()["calibration"]["coverage"]),
        model_bytes=len(vela.model), code_bytes=int(code["total"]), flash_bytes=len(vela.model) + int(code["total"]),
        arena_bytes=arena, arena_source=f"kTensorArenaSize: Vela's SRAM for feature maps and scratch, "
                                        f"{vela.sram_bytes:,} B, + margin",
        outside_arena_bytes=outside, decompression_bytes=None, ram_bytes=arena + outside,
        instructions=int(round(sum(per))), cycles=cycles, ms=ms, energy_uj=energy, pj_per_cycle=pj,
        energy_source=target.energy_source, flash_limit=int(target.flash_bytes), ram_limit=int(target.ram_bytes),
        decompression_limit=int(target.decompression_ram_bytes),
        code={k: code[k] for k in _CODE_KEYS},
        notes=tuple(notes), npu={**vela.to_dict(), "cpu_cycles": cpu.cycles if cpu else 0.0,
                                 "host_clock_hz": target.clock_hz})
