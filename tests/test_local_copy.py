"""A node-local copy of an s3:// model directory (`pipeline.storage.local_copy`), against moto_server:
downloaded once per machine whatever the number of processes asking, complete or absent."""

from __future__ import annotations

import logging
import threading

import pytest

from pipeline import storage


@pytest.fixture
def s3_model(moto_s3, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret"])
    monkeypatch.setenv("MIRAGE_CACHE", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"], endpoint_url=moto_s3["endpoint_url"],
                           client_kwargs={"region_name": moto_s3["region"]})
    bucket = f"models-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    fs.mkdir(bucket, region_name=moto_s3["region"])
    files = {"transformer/config.json": b'{"num_layers": 2}', "transformer/diffusion_pytorch_model.safetensors":
             bytes(range(256)) * 4096, "vae/config.json": b"{}", "model_index.json": b"{}"}
    for name, data in files.items():
        fs.pipe(f"{bucket}/Wan2.2/{name}", data)
    options = storage.StorageOptions(endpoint_url=moto_s3["endpoint_url"], region=moto_s3["region"])
    return f"s3://{bucket}/Wan2.2", options, files, fs


def test_downloaded_once_by_concurrent_processes_then_served_from_the_cache(s3_model, tmp_path, caplog):
    uri, options, files, fs = s3_model
    (tmp_path / "cache" / "models").mkdir(parents=True)
    results, errors = [], []

    def ask():
        try:
            results.append(storage.local_copy(uri, options))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="pipeline.storage"):
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(set(results)) == 1
    assert sum("downloading" in r.getMessage() for r in caplog.records) == 1
    local = results[0]
    for name, data in files.items():
        assert (local / name).read_bytes() == data
    assert not list((tmp_path / "cache" / "models").glob("*.tmp-*"))  # nothing half-written left
    fs.rm(uri.removeprefix("s3://"), recursive=True)
    assert storage.local_copy(uri, options) == local  # the cache, not the bucket


def test_a_subset_an_empty_prefix_and_a_local_path(s3_model, tmp_path):
    uri, options, files, _ = s3_model
    local = storage.local_copy(uri, options, names=["vae/config.json", "no/such/file"], kind="checkpoints")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        ".mirage-complete.json", "vae/config.json"]
    with pytest.raises(FileNotFoundError, match="no files to download"):
        storage.local_copy(uri + "-missing", options)
    assert storage.local_copy(str(tmp_path)) == tmp_path  # a local directory is used where it is


def test_an_interrupted_download_is_never_taken_for_the_model(s3_model, tmp_path):
    uri, options, files, _ = s3_model
    first = storage.local_copy(uri, options)
    (first / storage.COMPLETE_FILE).unlink()  # as if the process had died before finishing
    (first / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")
    again = storage.local_copy(uri, options)
    assert again == first and (again / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        files["transformer/diffusion_pytorch_model.safetensors"]
