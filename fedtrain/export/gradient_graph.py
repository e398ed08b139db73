"""Gradient graphs: a model's training step as a plain ONNX graph, for a device without torch.

The server builds, for the run's model and objective, an ONNX graph whose inputs are the trainable
parameters, a padded batch and a per-sample mask, and whose outputs are the loss and either the
per-sample gradients (DP-SGD: the device clips and noises them) or the batch gradient (no DP).

How: ``torch.func.vmap(grad_and_value(per_sample_loss))`` over ``functional_call`` of the model is traced
with ``make_fx`` into a graph of plain aten ops, wrapped in a module and exported with the dynamo exporter
(a direct export of the ``torch.func`` code fails). The graph uses only default-domain ops, so any
onnxruntime build runs it. The trace fixes the batch size: the device pads each Poisson batch to the
physical batch and masks the padding (``mask = 0``).

Graph contract (the device checks it, :mod:`fedtrain.edge.train.graph`):

- inputs: one per trainable parameter, named as in the model's state dict; ``x`` ``(B, *input_shape)``
  float32; ``y`` ``(B,)`` int64 (fine-tuning); ``mask`` ``(B,)`` float32, the per-sample coefficient of
  the loss (0 masks a padded row); ``class_weight`` ``(K,)`` float32 (fine-tuning); ``corruption`` ``(B, n)``
  float32 keep-mask of the denoising objective;
- outputs: ``loss`` (scalar, ``sum_i mask_i * loss_i``) and ``grad.<name>`` per parameter, ``(B, *shape)``
  per sample or ``shape`` for the batch;
- metadata_props: ``fedtrain.gradient.*`` JSON entries (:func:`graph_spec`), among them the objective, the
  label smoothing and every input's shape, so a device refuses a graph of another run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedtrain.config import RunConfig
from fedtrain.edge.train.graph import (
    GRADIENT_FORMAT,
    GRADIENT_PREFIX,
    MANIFEST,
    GradientSpec,
    graph_name,
    spec_from_props,
)
from fedtrain.errors import ExportError
from fedtrain.export.graph import OPSET, _quiet_exporter, _strip
from fedtrain.models import MLP
from fedtrain.models.mlp import DenseBlock
from fedtrain.pretrain import AUX_PREFIX

__all__ = [
    "GradientSpec",
    "build_gradient_graph",
    "check_traceable",
    "graph_name",
    "graph_spec",
    "publish_gradient_graphs",
    "publish_run_graphs",
    "run_phases",
]

_OBJECTIVES = ("finetune", "autoencoder", "denoising")


def graph_spec(model: onnx.ModelProto) -> GradientSpec:
    """The spec stored in a gradient graph's metadata."""
    return spec_from_props({p.key: p.value for p in model.metadata_props}, model.graph.name or "graph")


def check_traceable(cfg: RunConfig, objective: str) -> None:
    """Refuse, naming the key, what the gradient graphs do not cover (never a silent difference).

    Raises
    ------
    ExportError
        For a model, loss, pretraining method or setting no gradient graph computes.
    """
    m, t = cfg.model, cfg.train
    if m.model != "mlp":
        raise ExportError(
            f"model={m.model!r}: gradient graphs cover model='mlp' only. The CNN's forward traces, but its "
            "GroupNorm per-sample gradients under vmap are not validated against Opacus here; train it with "
            "client-runtime='torch'"
        )
    if m.activation == "prelu":
        raise ExportError(
            "activation='prelu': its learnable slope is a parameter outside the linear layers, which the DP graph's "
            "ghost clipping does not cover; use another activation or client-runtime='torch'"
        )
    if m.dropout > 0:
        raise ExportError(
            f"dropout={m.dropout}: a gradient graph has no random dropout masks; set dropout=0 or use "
            "client-runtime='torch'"
        )
    if objective not in _OBJECTIVES:
        raise ExportError(
            f"pretrain-method={objective!r}: no gradient graph for it. An RBM's contrastive-divergence update is "
            "not the gradient of a loss (it needs Gibbs sampling between forward passes), so it cannot be one "
            "graph of gradients; use pretrain-method='autoencoder' or 'denoising', or client-runtime='torch'"
        )
    if objective == "finetune" and t.loss != "cross-entropy":
        raise ExportError(f"loss={t.loss!r}: gradient graphs compute loss='cross-entropy' only; set it or use torch")


def _finetune_loss(model: nn.Module, label_smoothing: float, num_classes: int) -> Callable[..., torch.Tensor]:
    """Per-sample cross-entropy with class weights and label smoothing, as ``nn.CrossEntropyLoss`` sums it."""

    def loss(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, cw: torch.Tensor
    ) -> torch.Tensor:
        logits = torch.func.functional_call(model, params, (x.unsqueeze(0),))[0]
        logp = F.log_softmax(logits, dim=-1)
        at = y.reshape(1)  # gather, not one_hot: one_hot checks the labels' range, which vmap cannot trace
        nll = -(logp.gather(0, at) * cw.gather(0, at)).sum()
        smooth = -(logp * cw).sum() / num_classes
        return c * ((1.0 - label_smoothing) * nll + label_smoothing * smooth)

    return loss


def _pretrain_loss(model: MLP, layer: int, objective: str) -> Callable[..., torch.Tensor]:
    """Per-sample squared reconstruction error of layer ``layer``'s input, summed over features."""
    blocks = list(model.hidden)
    act = cast(DenseBlock, blocks[layer]).act

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor, *keep: torch.Tensor) -> torch.Tensor:
        h = x.reshape(1, -1)
        for j in range(layer):  # the frozen layers below, as MLP.features runs them
            sub = {k[len(f"hidden.{j}.") :]: v for k, v in params.items() if k.startswith(f"hidden.{j}.")}
            h = torch.func.functional_call(blocks[j], sub, (h,))
        v = h.detach()
        corrupted = v * keep[0] if keep else v
        w, b = params[f"hidden.{layer}.linear.weight"], params[f"hidden.{layer}.linear.bias"]
        enc = act(F.linear(corrupted, w, b))  # the encoder: the block's activation, no residual skip
        dec = F.linear(enc, params[AUX_PREFIX + "weight"], params[AUX_PREFIX + "bias"])
        return c * ((dec - v) ** 2).sum()

    return loss


Layer = tuple[str, torch.Tensor, torch.Tensor]  # (parameter prefix, the linear layer's input, its output)


def _linear(params: dict[str, torch.Tensor], prefix: str, h: torch.Tensor, layers: list[Layer]) -> torch.Tensor:
    z = F.linear(h, params[prefix + "weight"], params[prefix + "bias"])
    layers.append((prefix, h, z))
    return z


def _batched_losses(
    model: MLP, cfg: RunConfig, objective: str, layer: int, num_classes: int
) -> Callable[..., tuple[torch.Tensor, list[Layer]]]:
    """The batch's per-sample losses ``(B,)`` and every trained linear layer's input and output (ghost clipping)."""
    blocks = [cast(DenseBlock, b) for b in model.hidden]
    smoothing = float(cfg.train.label_smoothing)

    def finetune(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
                 cw: torch.Tensor) -> tuple[torch.Tensor, list[Layer]]:  # fmt: skip
        layers: list[Layer] = []
        h = x.flatten(1)
        for j, block in enumerate(blocks):
            out = block.act(_linear(params, f"hidden.{j}.linear.", h, layers))  # dropout is refused
            h = h + out if block.residual else out
        logp = F.log_softmax(_linear(params, "head.", h, layers), dim=1)
        nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1) * cw.gather(0, y)
        smooth = -(logp * cw).sum(1) / num_classes
        return c * ((1.0 - smoothing) * nll + smoothing * smooth), layers

    def pretrain(params: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor,
                 *keep: torch.Tensor) -> tuple[torch.Tensor, list[Layer]]:  # fmt: skip
        h = x.flatten(1)
        for j in range(layer):  # the frozen layers below, as MLP.features runs them
            sub = {k[len(f"hidden.{j}.") :]: v for k, v in params.items() if k.startswith(f"hidden.{j}.")}
            h = torch.func.functional_call(blocks[j], sub, (h,))
        v = h.detach()
        layers: list[Layer] = []
        enc = blocks[layer].act(_linear(params, f"hidden.{layer}.linear.", v * keep[0] if keep else v, layers))
        dec = _linear(params, AUX_PREFIX, enc, layers)
        return c * ((dec - v) ** 2).sum(1), layers

    return finetune if objective == "finetune" else pretrain


def _ghost_clipped(
    batched: Callable[..., tuple[torch.Tensor, list[Layer]]], names: list[str], frozen: list[str]
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Per-sample clipping without per-sample gradients (ghost clipping, Li et al. 2022; Opacus' ``ghost``).

    A linear layer's per-sample weight gradient is ``delta_i a_i^T``, whose norm is ``|delta_i| |a_i|``; one
    backward pass gives every ``delta_i`` (the samples' losses are independent), and the clipped sum is
    ``(f * delta)^T a``. Same clipping as Opacus' per-sample norms, at the cost of one batch gradient.
    """
    n_params = len(names) + len(frozen)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = {
            n: t.detach().requires_grad_(n in names) for n, t in zip(names + frozen, args[:n_params], strict=True)
        }
        *data, bound, flags = args[n_params:]
        losses, layers = batched(params, *data)
        deltas = torch.autograd.grad(losses.sum(), [z for _, _, z in layers])
        flag = {n: flags[i] for i, n in enumerate(names)}
        sq = torch.zeros_like(losses)
        for (prefix, a, _), d in zip(layers, deltas, strict=True):
            dd = d.square().sum(1)
            sq = sq + flag[prefix + "weight"] * dd * a.detach().square().sum(1) + flag[prefix + "bias"] * dd
        factor = (bound / (torch.sqrt(sq) + 1e-6)).clamp(max=1.0)
        sums: dict[str, torch.Tensor] = {}
        for (prefix, a, _), d in zip(layers, deltas, strict=True):
            fd = d * factor.unsqueeze(1)
            sums[prefix + "weight"], sums[prefix + "bias"] = fd.t() @ a.detach(), fd.sum(0)
        return (losses.sum().detach(), *(sums[n] for n in names))

    return fn


def traced_function(
    model: MLP, cfg: RunConfig, objective: str, layer: int, num_classes: int, per_sample: bool, clipped: bool = False
) -> tuple[Callable[..., tuple[torch.Tensor, ...]], list[str], list[str], list[str], dict[str, list[int]]]:
    """The function to trace, the names of its trainable, frozen and data inputs, and the parameters' shapes.

    ``clipped`` (per-sample only): the graph clips each sample's gradient to ``max_grad_norm`` over the
    parameters whose ``trainable`` flag is 1 (Opacus' rule: factor ``min(1, C / (norm + 1e-6))``) and returns
    the sum (:func:`_ghost_clipped`), so no per-sample gradient is ever materialised.
    """
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if objective == "finetune":
        names = [n for n, _ in model.named_parameters()]
        frozen: list[str] = []
        extra = ["x", "y", "mask", "class_weight"]
        per = _finetune_loss(model, float(cfg.train.label_smoothing), num_classes)
        dims: tuple[int | None, ...] = (None, 0, 0, 0, None)
    else:
        if not 0 <= layer < len(model.hidden):
            raise ExportError(f"layer {layer} is not a hidden layer of this MLP (it has {len(model.hidden)})")
        names = [f"hidden.{layer}.linear.{w}" for w in ("weight", "bias")] + [
            f"{AUX_PREFIX}{w}" for w in ("weight", "bias")
        ]
        frozen = [f"hidden.{j}.linear.{w}" for j in range(layer) for w in ("weight", "bias")]
        extra = ["x", "mask"] + (["corruption"] if objective == "denoising" else [])
        per = _pretrain_loss(model, layer, objective)
        dims = (None, 0, 0) + ((0,) if objective == "denoising" else ())
        out_f, in_f = shapes[f"hidden.{layer}.linear.weight"]
        shapes.update({AUX_PREFIX + "weight": [in_f, out_f], AUX_PREFIX + "bias": [in_f]})
    if clipped:
        extra = [*extra, "max_grad_norm", "trainable"]
        batched = _batched_losses(model, cfg, objective, layer, num_classes)
        return _ghost_clipped(batched, names, frozen), names, frozen, extra, shapes
    n_trained, n_frozen = len(names), len(frozen)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = dict(zip(names + frozen, args[: n_trained + n_frozen], strict=True))
        data = args[n_trained + n_frozen :]

        trained, fixed = {n: params[n] for n in names}, {n: params[n] for n in frozen}

        def one(t: dict[str, torch.Tensor], *d: torch.Tensor) -> torch.Tensor:
            return per({**fixed, **t}, *d)

        if per_sample:
            grads, losses = torch.func.vmap(torch.func.grad_and_value(one), in_dims=dims)(trained, *data)
            return (losses.sum(), *(grads[n] for n in names))

        def total(t: dict[str, torch.Tensor], *d: torch.Tensor) -> torch.Tensor:
            return torch.func.vmap(one, in_dims=dims)(t, *d).sum()

        grads, loss = torch.func.grad_and_value(total)(trained, *data)
        return (loss, *(grads[n] for n in names))

    return fn, names, frozen, extra, shapes


class _Traced(nn.Module):
    """A make_fx graph behind a module with positional inputs, so the dynamo exporter takes it."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.gm(*args))


def build_gradient_graph(
    model: nn.Module,
    cfg: RunConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    per_sample: bool,
    batch: int,
    objective: str = "finetune",
    layer: int = -1,
    clipped: bool = False,
) -> onnx.ModelProto:
    """The gradient graph of ``model`` for ``objective``, traced at physical batch ``batch``.

    Raises
    ------
    ExportError
        For what :func:`check_traceable` refuses, or when the trace or the export fails (with the reason).
    """
    check_traceable(cfg, objective)
    if not isinstance(model, MLP):
        raise ExportError(f"gradient graphs cover fedtrain's MLP, got {type(model).__name__}")
    fn, names, frozen, extra, shapes = traced_function(
        model, cfg, objective, layer, num_classes, per_sample, clipped and per_sample
    )
    example = _example_inputs(shapes, names, frozen, extra, input_shape, num_classes, batch)
    try:
        from torch.fx.experimental.proxy_tensor import make_fx

        gm = make_fx(fn)(*example)
        with _quiet_exporter():
            program = torch.onnx.export(
                _Traced(gm).eval(), tuple(example), dynamo=True, opset_version=OPSET,
                input_names=[*names, *frozen, *extra],
                output_names=["loss", *(f"grad.{n}" for n in names)], verbose=False,
            )  # fmt: skip
    except Exception as err:  # torch's tracer and exporter raise many kinds
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        raise ExportError(f"the {objective} gradient graph of this model does not trace: {reason}") from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    _strip(proto)
    spec = GradientSpec(
        objective=objective, per_sample=per_sample, batch=batch, input_shape=list(input_shape),
        num_classes=num_classes, params={n: shapes[n] for n in names}, frozen={n: shapes[n] for n in frozen},
        layer=layer, label_smoothing=float(cfg.train.label_smoothing) if objective == "finetune" else 0.0,
        clipped=clipped and per_sample,
    )  # fmt: skip
    for key, value in asdict(spec).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = GRADIENT_PREFIX + key, json.dumps(value)
    proto.producer_name = "fedtrain"
    onnx.checker.check_model(proto, full_check=True)
    _check_outputs(proto, spec)
    return proto


def build_forward_graph(
    model: nn.Module, input_shape: tuple[int, ...], num_classes: int, *, batch: int
) -> onnx.ModelProto:
    """Logits of ``model`` with its parameters as inputs (the device's evaluation), traced at ``batch``."""
    names = [n for n, _ in model.named_parameters()]

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = dict(zip(names, args[:-1], strict=True))
        return (torch.func.functional_call(model, params, (args[-1],)),)

    from torch.fx.experimental.proxy_tensor import make_fx

    example = [p.detach().clone() for p in model.parameters()] + [torch.zeros(batch, *input_shape)]
    gm = make_fx(fn)(*example)
    with _quiet_exporter():
        program = torch.onnx.export(
            _Traced(gm).eval(), tuple(example), dynamo=True, opset_version=OPSET, input_names=[*names, "x"],
            output_names=["logits"], verbose=False,
        )  # fmt: skip
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    _strip(proto)
    spec = GradientSpec(
        objective="forward", per_sample=False, batch=batch, input_shape=list(input_shape), num_classes=num_classes,
        params={n: list(p.shape) for n, p in model.named_parameters()},
    )  # fmt: skip
    for key, value in asdict(spec).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = GRADIENT_PREFIX + key, json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    _check_outputs(proto, spec)
    return proto


def _check_outputs(proto: onnx.ModelProto, spec: GradientSpec) -> None:
    """Run the graph once in onnxruntime (what the device will run) and check its opset and output shapes.

    Raises
    ------
    ExportError
        When the graph needs another opset or an output's shape is not what the spec promises.
    """
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET or set(opsets) - {"", "ai.onnx"}:
        raise ExportError(f"the gradient graph uses opsets {opsets}; the device runtime takes opset {OPSET} only")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else spec.batch for d in i.shape]
        dtype = np.int64 if i.type == "tensor(int64)" else np.float32
        feed[i.name] = np.zeros(shape, dtype=dtype) if dtype is np.int64 else np.ones(shape, dtype=dtype)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    lead = [spec.batch] if spec.per_sample and not spec.clipped else []
    for name, shape in spec.params.items():
        key = "logits" if spec.objective == "forward" else f"grad.{name}"
        want = [spec.batch, spec.num_classes] if spec.objective == "forward" else [*lead, *shape]
        got = list(outputs[key].shape)
        if got != want:
            raise ExportError(f"the gradient graph's output {key} has shape {got}, its spec says {want}")


def _example_inputs(
    shapes: dict[str, list[int]],
    names: list[str],
    frozen: list[str],
    extra: list[str],
    input_shape: tuple[int, ...],
    num_classes: int,
    batch: int,
) -> list[torch.Tensor]:
    width = shapes[names[0]][1]  # denoising: the input width of the layer trained (its weight's columns)
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "x": lambda: torch.randn(batch, *input_shape),
        "y": lambda: torch.arange(batch) % num_classes,
        "mask": lambda: torch.ones(batch),
        "class_weight": lambda: torch.ones(num_classes),
        "corruption": lambda: torch.ones(batch, width),
        "max_grad_norm": lambda: torch.tensor(1.0),
        "trainable": lambda: torch.ones(len(names)),
    }
    params = [0.1 * torch.randn(*shapes[n]) for n in names + frozen]  # values do not matter to the trace
    return params + [makers[e]() for e in extra]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_gradient_graphs(
    model: nn.Module,
    cfg: RunConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    out_dir: Path,
    *,
    batch: int,
    phases: list[tuple[str, int]] | None = None,
    pretrain_batch: int | None = None,
    kinds: tuple[str, ...] = ("clipped", "per-sample", "batch", "forward"),
) -> dict[str, Any]:
    """Write the run's gradient graphs and a manifest of their sha256 to ``out_dir``; return the manifest.

    ``phases`` lists ``(objective, layer)``; by default fine-tuning only. ``batch`` is the physical batch of
    the fine-tuning graphs (a larger logical batch runs in chunks), ``pretrain_batch`` (default ``batch``) that of
    the pretraining ones. Each phase gets a per-sample
    graph (DP-SGD) and a batch graph (no DP); the device picks one and checks its checksum and spec. A forward
    graph (logits) serves the device's evaluation. ``kinds`` limits what is written (tests).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for objective, layer in phases or [("finetune", -1)]:
        for per_sample, clipped in ((True, True), (True, False), (False, False)):
            if graph_name("", -1, per_sample, clipped=clipped)[1:] not in kinds:
                continue
            size = batch if objective == "finetune" else (pretrain_batch or batch)
            if per_sample:  # room for a Poisson batch's spread (+3 sd), so a logical batch is nearly always one run
                size += math.ceil(3 * math.sqrt(size))
            proto = build_gradient_graph(
                model, cfg, input_shape, num_classes, per_sample=per_sample, batch=size, objective=objective,
                layer=layer, clipped=clipped,
            )  # fmt: skip
            name = graph_name(objective, layer, per_sample, clipped=clipped)
            path = out_dir / f"{name}.onnx"
            onnx.save(proto, path)
            entries[name] = {"file": path.name, "sha256": sha256_of(path)}
    if "forward" in kinds:
        forward = out_dir / "forward.onnx"
        onnx.save(build_forward_graph(model, input_shape, num_classes, batch=batch), forward)
        entries[graph_name("forward", -1, False)] = {"file": forward.name, "sha256": sha256_of(forward)}
    manifest = {"format": GRADIENT_FORMAT, "graphs": entries}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def run_phases(cfg: RunConfig) -> list[tuple[str, int]]:
    """The ``(objective, layer)`` of every federated phase of ``cfg``'s plan that trains on clients."""
    phases: list[tuple[str, int]] = []
    for name in cfg.phases:
        if name == "pretrain":
            phases += [(cfg.pretrain.pretrain_method, k) for k in range(cfg.num_hidden_layers)]
        elif name == "finetune":
            phases.append(("finetune", -1))
    return phases


def publish_run_graphs(
    cfg: RunConfig, out_dir: Path, *, kinds: tuple[str, ...] = ("clipped", "per-sample", "batch", "forward")
) -> dict[str, Any]:
    """Every gradient graph ``cfg``'s plan needs, for the federation's inputs and classes, in ``out_dir``.

    ``kinds`` limits the graphs written (:func:`publish_gradient_graphs`).

    Raises
    ------
    ExportError
        For a model, objective or setting no gradient graph computes (naming the key).
    """
    from fedtrain.data import server_data
    from fedtrain.models import build_model

    spec = server_data(cfg).spec
    model = build_model(cfg.model, spec.input_shape, len(spec.classes), seed=cfg.runtime.seed)
    phases = run_phases(cfg)
    for objective, _ in phases:
        check_traceable(cfg, objective)
    return publish_gradient_graphs(
        model, cfg, spec.input_shape, len(spec.classes), out_dir, batch=cfg.train.batch_size or 64, phases=phases,
        pretrain_batch=cfg.pretrain.pretrain_batch_size or 64, kinds=kinds,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m fedtrain.export.gradient_graph OUT [--config FILE] [--run-config "k=v ..."]``."""
    import argparse

    from fedtrain.config import load_config

    parser = argparse.ArgumentParser(description="Publish the gradient graphs of a run for ONNX clients.")
    parser.add_argument("out", type=Path, help="folder to write the graphs and gradient-graphs.json to")
    parser.add_argument("--config", type=Path, help="the run's TOML config")
    parser.add_argument("--run-config", default="", help="the run's overrides, e.g. \"dp-level='sample'\"")
    args = parser.parse_args(argv)
    cfg = load_config(file=args.config, overrides=args.run_config or None)
    manifest = publish_run_graphs(cfg, args.out)
    for name, entry in manifest["graphs"].items():
        print(f"{name}\t{entry['file']}\t{entry['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
