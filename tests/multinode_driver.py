"""The driver side of tests/test_multinode.py, run as its own process: Ray keeps process-wide state
(the connection, the auth mode it read first), so a driver of the test cluster must not be the
pytest process that runs every other test on a local Ray.

    python tests/multinode_driver.py wait ADDRESS NODE[,NODE...]      # until exactly these nodes are up
    python tests/multinode_driver.py preprocess ADDRESS CONFIG_JSON DEAD_NODE
    python tests/multinode_driver.py train ADDRESS CONFIG_JSON

Prints one JSON line with the result.
"""

import json
import sys
import time


def _up(names: set[str]) -> set[str]:
    import ray

    return {r for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r in names}


def wait(alive: set[str], every: set[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while _up(every) != alive:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes up {sorted(_up(every))}, wanted {sorted(alive)}")
        time.sleep(0.5)


def main(argv: list[str]) -> dict:
    import ray

    command, address = argv[0], argv[1]
    ray.init(address=address, log_to_driver=False)
    if command == "wait":
        names = set(argv[2].split(","))
        wait(names, names | {"head", "node2", "node3", "node4"})
        return {"up": sorted(names)}
    if command == "preprocess":
        from ray.util.state import list_tasks

        from jobs.preprocess import run_preprocess
        from pipeline.config import PreprocessConfig

        dead = argv[3]
        node_of = {n["NodeID"]: next((r for r in n["Resources"] if r in ("head", dead)), None) for n in ray.nodes()}
        summary = run_preprocess(PreprocessConfig.model_validate(json.loads(argv[2])))
        wait({"head"}, {"head", dead})  # Ray marks the node dead once its health checks fail
        # this cluster's address: another Ray may run on the machine (the test process keeps one)
        tasks = list_tasks(address=ray.get_runtime_context().gcs_address, limit=10000, raise_on_missing_output=False)
        ran = {node_of.get(t.node_id) for t in tasks
               if t.name.startswith("MapBatches(_decode_batch)") and t.node_id}
        dead_ids = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
        return {"samples": summary["manifest"]["samples"], "decoded_on": sorted(x for x in ran if x),
                "dead": sorted(node_of[i] for i in dead_ids if node_of.get(i))}
    if command == "train":
        from jobs.config import TrainConfig
        from jobs.train import run_train

        summary = run_train(TrainConfig.model_validate(json.loads(argv[2])))
        return {k: summary.get(k) for k in ("state", "run_id", "checkpoint", "summary")}
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result, default=str))
