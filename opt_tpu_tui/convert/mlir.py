"""Top-dialect MLIR text, built op by op; weights go to the .npz its module names."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tensor(shape: tuple[int, ...]) -> str:
    return "tensor<" + "x".join(map(str, shape)) + "xf32>"


def attr(value: object) -> str:
    """An MLIR attribute: floats as f64 in full (tpuc-opt rejects "1e-05"), (n, "si32") typed ints, lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.9e} : f64"
    if isinstance(value, tuple):  # (int, "si32")
        return f"{value[0]} : {value[1]}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


class Graph:
    """One function @main: inputs, weights and ops, written out as a module with its .npz.

    Every value carries a unique ``loc`` name; a weight's is also its key in the .npz.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[tuple[str, tuple[int, ...]]] = []
        self.lines: list[str] = []
        self.locs: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.count = 1

    def _value(self, loc: str, shape: tuple[int, ...]) -> str:
        value = f"%{self.count}"
        self.count += 1
        self.locs.append(loc)
        self.shapes[value] = shape
        return value

    def input(self, loc: str, shape: tuple[int, ...]) -> str:
        arg = f"%arg{len(self.inputs)}"
        self.inputs.append((arg, shape))
        value = self._value(loc, shape)
        self.lines.append(f'{value} = "top.Input"({arg}) : ({tensor(shape)}) -> {tensor(shape)} loc(#loc{len(self.locs)})')
        return value

    def weight(self, loc: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.weights[loc] = array
        value = self._value(loc, array.shape)
        self.lines.append(f'{value} = "top.Weight"() : () -> {tensor(array.shape)} loc(#loc{len(self.locs)})')
        return value

    def op(self, kind: str, loc: str, operands: list[str | None], out: tuple[int, ...], **attrs: object) -> str:
        value = self._value(loc, out)
        names = [o if o is not None else "%0" for o in operands]
        types = [tensor(self.shapes[o]) if o is not None else "none" for o in operands]
        attributes = ", ".join(f"{k} = {attr(v)}" for k, v in attrs.items())
        self.lines.append(
            f'{value} = "top.{kind}"({", ".join(names)}) {{{attributes}}} : ({", ".join(types)}) -> {tensor(out)} '
            f"loc(#loc{len(self.locs)})"
        )
        return value

    def write(self, folder: Path, outputs: list[str]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{self.name}_top_weights.npz", **self.weights)
        args = ", ".join(f"{a}: {tensor(s)} loc(unknown)" for a, s in self.inputs)
        results = ", ".join(tensor(self.shapes[o]) for o in outputs)
        body = "\n    ".join(['%0 = "top.None"() : () -> none loc(#loc)', *self.lines])
        text = (
            f'module @{self.name} attributes {{module.weight_file = "{self.name}_top_weights.npz", '
            'module.platform = "LLM", module.state = "TOP_F32", module.chip = "ALL", module.top_run_mode = "STATIC"} {\n'
            f"  func.func @main({args}) -> ({results}) {{\n    {body}\n"
            f"    return {', '.join(outputs)} : {results} loc(#loc)\n  }} loc(#loc)\n}} loc(#loc)\n#loc = loc(unknown)\n"
            + "".join(f'#loc{i} = loc("{loc}")\n' for i, loc in enumerate(self.locs, 1))
        )
        path = folder / f"{self.name}.mlir"
        path.write_text(text)
        return path
