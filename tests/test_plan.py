"""`mirage plan`: the memory and compute plan of a training config, from the model on the meta device,
and the shipped full-size config against the shipped clusters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.config import TrainConfig
from mirage_model.config import load_config
from mirage_model.training.plan import GIB

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "configs" / "train" / "ti2v-5b.yaml"
# what the shipped clusters' GPU nodes are (AWS instance types; GPU Feature Discovery product labels)
INSTANCES = {"p4d.24xlarge": {"gpu_gib": 40, "host_gib": 1152}, "g5.xlarge": {"gpu_gib": 24, "host_gib": 16}}
GPU_PRODUCTS = {"NVIDIA-A100-SXM4-40GB": 40}


@pytest.fixture(scope="module")
def full_plan():
    from jobs.plan import plan_config

    return plan_config(load_config(TrainConfig, FULL), gpu_memory_gib=40)


def test_the_5b_model_counted_on_the_meta_device(full_plan):
    params = full_plan["stages"][0]["parameters"]
    assert 4.9e9 < params["backbone"] < 5.1e9  # Wan2.2-TI2V-5B
    assert params["lora"] == 80_609_280  # rank 32 on every attention and FFN linear of the 30 blocks
    assert 2.5e9 < params["branch"] < 2.7e9 and 5.6e9 < params["text_encoder"] < 5.8e9  # UMT5-XXL encoder
    stage = {s["stage"]: s for s in full_plan["stages"]}
    assert list(stage) == ["branch", "lora"] and stage["branch"]["tokens"] == 11 * 22 * 40
    ddp, fsdp = stage["branch"]["plans"]["ddp"], stage["branch"]["plans"]["fsdp"]
    # exact bookkeeping: the frozen backbone in bf16, the trained branch and LoRA as fp32 master weights,
    # branch gradients and AdamW in fp32, DDP's buckets
    assert ddp["rows"]["weights"] == params["backbone"] * 2 + (params["branch"] + params["lora"]) * 4
    assert "text encoder" not in ddp["rows"]  # the shipped config reads the shards' text states
    assert ddp["rows"]["gradients"] == params["branch"] * 4 == ddp["rows"]["DDP gradient buckets"]
    assert ddp["rows"]["optimizer (AdamW)"] == params["branch"] * 8
    assert fsdp["rows"]["optimizer (AdamW)"] == params["branch"] * 8 // 8
    assert not ddp["fits"] and ddp["total"] > 2 * fsdp["total"]  # DDP cannot hold it on 40 GB cards
    assert fsdp["fits"] and fsdp["total"] < ddp["total"] / 2
    assert stage["branch"]["forward_flops"] > 1e14 and ddp["step_flops"] == 2 * stage["branch"]["forward_flops"]


def test_a_run_that_encodes_its_captions_holds_the_text_encoder_on_every_gpu(full_plan):
    from jobs.plan import plan_config

    own = plan_config(load_config(TrainConfig, FULL, {"data.text_embeddings": "encoder"}), gpu_memory_gib=80)
    params = own["stages"][0]["parameters"]
    shards = {st["stage"]: st["plans"] for st in full_plan["stages"]}
    for st in own["stages"]:
        for par, plan in st["plans"].items():
            extra = params["text_encoder"] * 2  # UMT5-XXL in bf16
            assert plan["rows"]["text encoder"] == extra
            assert plan["total"] == shards[st["stage"]][par]["total"] + extra
            assert plan["host_load_bytes"] == shards[st["stage"]][par]["host_load_bytes"] + extra
    assert not own["stages"][0]["plans"]["ddp"]["fits"]  # DDP's branch stage: 73 GiB, over 90 % of 80


def test_the_shipped_config_fits_the_shipped_clusters(full_plan):
    cfg = load_config(TrainConfig, FULL)
    s = cfg.scaling
    plan = {st["stage"]: st["plans"][s.parallel] for st in full_plan["stages"]}
    need_gpu = max(p["total"] for p in plan.values()) / GIB
    need_host = max(p["host_load_bytes"] for p in plan.values()) / GIB
    assert all(p["fits"] for p in plan.values()), plan

    def fits(slots: int, cpus_per_gpu: float, host_gib_per_gpu: float, gpu_gib: float) -> bool:
        return (slots >= s.num_workers and cpus_per_gpu >= s.cpus_per_worker and host_gib_per_gpu >= need_host
                and 0.9 * gpu_gib >= need_gpu)

    launcher = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())["available_node_types"]
    ok_launcher = [name for name, node in launcher.items() if node.get("resources", {}).get("GPU")
                   and fits(node["max_workers"] * node["resources"]["GPU"],
                            node["resources"]["CPU"] / node["resources"]["GPU"],
                            INSTANCES[node["node_config"]["InstanceType"]]["host_gib"] / node["resources"]["GPU"],
                            INSTANCES[node["node_config"]["InstanceType"]]["gpu_gib"])]
    assert ok_launcher == ["gpu_a100"], ok_launcher

    groups = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())["spec"]["workerGroupSpecs"]
    ok_kuberay = []
    for g in groups:
        pod = g["template"]["spec"]
        req = pod["containers"][0]["resources"]["requests"]
        product = pod.get("nodeSelector", {}).get("nvidia.com/gpu.product")
        if "nvidia.com/gpu" in req and product in GPU_PRODUCTS:
            gpus = int(req["nvidia.com/gpu"])
            if fits(g["maxReplicas"] * gpus, float(req["cpu"]) / gpus, float(req["memory"].rstrip("Gi")) / gpus,
                    GPU_PRODUCTS[product]):
                ok_kuberay.append(g["groupName"])
    assert ok_kuberay == ["gpu-a100"], ok_kuberay


def test_a_config_that_does_not_fit_is_said_so():
    from jobs.plan import plan_config

    cfg = load_config(TrainConfig, FULL, {}, ["scaling.parallel=ddp", "model.gradient_checkpointing=false"])
    plan = plan_config(cfg, workers=8, gpu_memory_gib=40)
    branch = plan["stages"][0]["plans"]
    assert not branch["ddp"]["fits"] and not branch["fsdp"]["fits"]  # activations without checkpointing


def test_mirage_plan_prints_a_table_per_stage(capsys):
    from jobs.cli import main

    assert main(["plan", "--config", str(ROOT / "configs/train/tiny.yaml"), "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert out.count("| GiB per GPU | DDP | FSDP |") == 2 and "fits in 24 GiB (90 %) | yes | yes |" in out


def test_the_plan_is_within_20_percent_of_a_measured_training_step():
    """The small preset on the CPU: forward, backward and AdamW of the real model; the peak of torch's
    allocations above the weights against the plan's gradients + optimizer + activations."""
    from benchmarks.plan_bench import measured_vs_planned

    for stage in ("branch", "lora"):
        r = measured_vs_planned("small", 1, stage)
        assert 0.8 <= r["ratio"] <= 1.2, (stage, r)
        assert r["measured_mib"] > 5  # a real step, not an empty one


def test_measuring_needs_the_meta_device():
    from mirage_model.model.mirage_transformer import MirageTransformer
    from mirage_model.model.presets import build_transformer
    from mirage_model.training.plan import StepShape, measure_model

    with pytest.raises(ValueError, match="meta device"):
        measure_model(MirageTransformer.from_backbone(build_transformer("tiny")), StepShape(64, 96, 2, 0, 1, 8))
