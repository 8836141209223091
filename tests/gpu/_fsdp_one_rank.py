"""One FSDP2 rank over nccl, as `torchrun --standalone --nproc-per-node 1 _fsdp_one_rank.py CKPT
OUT` starts it (test_gpu_fsdp.py): the tiny Llama of CKPT trains a few bf16 steps plain and
sharded by `train.distributed.parallelize`; their weights and losses, the sharded model's DCP
state saved and loaded into a fresh sharded model, and what it gathers go to OUT/result.json.

(`midtrain anneal` under torchrun with one process is the single-process run by design, so the
sharded path is driven here through the trainer's own distributed functions.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as td

STEPS, LR = 4, 1e-3


def train(model, opt, params, batch, reduce) -> list[float]:
    from midtrain.train.optim import lm_loss

    n_targets = batch.shape[0] * (batch.shape[1] - 1)
    losses = []
    for _ in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(model, batch) / n_targets
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        loss, norm = reduce(loss.detach(), norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(equal(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k])
               if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)  # fmt: skip


def main(ckpt: str, out: Path) -> None:
    from torch.distributed.tensor import DTensor

    from midtrain.train import distributed as dist
    from midtrain.train.checkpoint import load_model
    from midtrain.train.config import OptimizerConfig
    from midtrain.train.optim import make_optimizer

    torch.cuda.set_device(0)
    td.init_process_group("nccl", device_id=torch.device("cuda", 0))
    d = dist.Dist("fsdp", td.get_rank(), td.get_world_size(), 0)
    make = lambda params: make_optimizer(params, OptimizerConfig())  # noqa: E731

    plain = load_model(ckpt, "cuda")
    batch = torch.randint(1, plain.config.vocab_size, (4, 32),
                          generator=torch.Generator().manual_seed(0)).cuda()  # fmt: skip
    params = list(plain.parameters())
    ref_losses = train(plain, make(params), params, batch, lambda loss, norm: (loss, norm))

    def sharded():  # rank 0 of FSDP2 loads on the host (distributed.load_device)
        model = load_model(ckpt, "cpu")
        return dist.parallelize(model, make(list(model.parameters())), make, d, "cuda")

    model, opt, params = sharded()
    kinds = [(isinstance(p, DTensor), p.device.type) for p in model.parameters()]
    losses = train(model, opt, params, batch, dist.reduce_metrics(d))
    full, osd = dist.full_state(model, opt)
    ref = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    dist.save_state(out / "state", model, opt, {"step": STEPS}, None, d, STEPS)
    model2, opt2, _ = sharded()
    dist.load_state(out / "state", model2, opt2, d)
    full2, osd2 = dist.full_state(model2, opt2)
    result = {
        "backend": td.get_backend(), "world": td.get_world_size(),
        "sharded": all(k[0] for k in kinds), "on_cuda": all(k[1] == "cuda" for k in kinds),
        "same_keys": full.keys() == ref.keys(),
        "max_abs_diff_vs_plain": max(float((full[k] - ref[k]).abs().max()) for k in ref),
        "losses": losses, "ref_losses": ref_losses,
        "max_loss_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True)),
        "dcp_weights_equal": equal(full, full2), "dcp_moments_equal": equal(osd, osd2),
        "moments": len(osd.get("state", {})),
    }  # fmt: skip
    (out / "result.json").write_text(json.dumps(result))
    td.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
