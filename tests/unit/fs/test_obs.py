"""obs:// filesystem: configuration from the connection, and real S3-protocol I/O against moto."""

from __future__ import annotations

import json
import re
import sys
import uuid

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.exceptions import ModelArtsConfigError
from airflow_provider_modelarts.fs import obs
from airflow_provider_modelarts.transfer import StagedObject, write_bytes_atomically
from tests.fixtures.moto_server import MOTO_AK, MOTO_REGION, MOTO_SK


def set_conn(monkeypatch, conn_id: str, **conn):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "modelarts", **conn}))


def test_endpoint_from_region_and_credentials(monkeypatch):
    set_conn(
        monkeypatch,
        "ma_obs_region",
        login="AKEXAMPLE",
        password="SKEXAMPLE",
        extra={"project_id": "p1", "region": "cn-north-4", "security_token": "TOKEN/+="},
    )
    fs = obs.get_fs("ma_obs_region")
    assert fs.client_kwargs["region_name"] == "cn-north-4"
    assert fs.endpoint_url == "https://obs.cn-north-4.myhuaweicloud.com"
    assert (fs.key, fs.secret, fs.token) == ("AKEXAMPLE", "SKEXAMPLE", "TOKEN/+=")


def test_obs_endpoint_override_and_storage_options(monkeypatch):
    set_conn(
        monkeypatch,
        "ma_obs_override",
        login="AK2",
        password="SK2",
        extra={"region": "cn-north-4", "obs_endpoint": "http://127.0.0.1:9/"},
    )
    fs = obs.get_fs("ma_obs_override", {"default_block_size": 8 * 1024 * 1024})
    assert fs.endpoint_url == "http://127.0.0.1:9"
    assert fs.default_block_size == 8 * 1024 * 1024


def test_checksums_only_when_required_by_default_and_the_connection_can_say_otherwise(monkeypatch):
    # OBS refuses botocore's default flexible-checksum headers (tests/integration/test_obs_checksum_compat.py).
    base = {"region": "cn-north-4", "obs_endpoint": "http://127.0.0.1:9"}
    set_conn(monkeypatch, "ma_obs_default", login="AK", password="SK", extra=base)
    config = obs.get_fs("ma_obs_default").connect().meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    override = {**base, "obs_config_kwargs": {"request_checksum_calculation": "when_supported"}}
    set_conn(monkeypatch, "ma_obs_checksums", login="AK", password="SK", extra=override)
    fs = obs.get_fs("ma_obs_checksums")
    assert fs.connect().meta.config.request_checksum_calculation == "when_supported"
    assert fs.config_kwargs["response_checksum_validation"] == "when_required"


def test_missing_region_is_a_clear_error(monkeypatch):
    set_conn(monkeypatch, "ma_obs_noregion", login="AK", password="SK", extra={"project_id": "p"})
    with pytest.raises(ModelArtsConfigError, match="region"):
        obs.get_fs("ma_obs_noregion")


def test_token_connection_without_aksk_is_rejected(monkeypatch):
    set_conn(
        monkeypatch,
        "ma_obs_token",
        login="user",
        extra={"auth_type": "token", "domain_name": "d", "region": "cn-north-4"},
    )
    with pytest.raises(ModelArtsConfigError, match="access key"):
        obs.get_fs("ma_obs_token")


def test_missing_s3fs_is_a_clear_error():
    """In a fresh process where s3fs cannot be imported (an import hook refuses it)."""
    import subprocess

    code = (
        "import importlib.abc, sys\n"
        "class NoS3fs(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 's3fs' or name.startswith('s3fs.'):\n"
        "            raise ImportError('No module named s3fs')\n"
        "sys.meta_path.insert(0, NoS3fs())\n"
        "from airflow_provider_modelarts.fs import obs\n"
        "try:\n"
        "    obs.get_fs('anything')\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"ImportError: .*airflow-provider-modelarts\[obs\]", out.stdout)


def test_scheme_is_registered_with_airflow():
    from airflow.sdk.io.fs import has_fs

    assert obs.schemes == ["obs"]
    assert has_fs("obs")


# --------------------------------------------------------------------------------------------------------
# real S3 protocol (moto)


@pytest.fixture
def obs_moto_conn(moto_server, monkeypatch):
    set_conn(
        monkeypatch,
        "obs_moto",
        login=MOTO_AK,
        password=MOTO_SK,
        extra={"project_id": "p", "region": MOTO_REGION, "obs_endpoint": moto_server},
    )
    return "obs_moto"


@pytest.mark.integration
def test_object_storage_path_round_trip_on_moto(obs_moto_conn, s3_bucket):
    root = ObjectStoragePath(f"obs://{s3_bucket}/logs", conn_id=obs_moto_conn)
    target = root / "job" / "worker-0.log"
    target.write_bytes(b"hello obs\n")
    assert target.read_bytes() == b"hello obs\n"
    assert [p.name for p in (root / "job").iterdir()] == ["worker-0.log"]


@pytest.mark.integration
def test_staged_upload_is_invisible_until_commit(obs_moto_conn, s3_bucket):
    root = ObjectStoragePath(f"obs://{s3_bucket}", conn_id=obs_moto_conn)
    target = root / f"staged-{uuid.uuid4().hex}.log"
    payload = b"x" * (6 * 1024 * 1024) + b"tail"
    staged = StagedObject(target)
    staged.write(payload[: 5 * 1024 * 1024])
    staged.write(payload[5 * 1024 * 1024 :])
    assert not target.exists()
    staged.commit()
    assert target.read_bytes() == payload

    discarded = root / f"discarded-{uuid.uuid4().hex}.log"
    staged = StagedObject(discarded)
    staged.write(b"partial")
    staged.discard()
    assert not discarded.exists()
    assert [p.name for p in root.iterdir()] == [target.name]


@pytest.mark.integration
def test_write_bytes_atomically_small_object(obs_moto_conn, s3_bucket):
    target = ObjectStoragePath(f"obs://{s3_bucket}/m/manifest.json", conn_id=obs_moto_conn)
    write_bytes_atomically(target, b"{}")
    assert target.read_bytes() == b"{}"


def test_obs_paths_work_without_importing_the_provider_first(tmp_path):
    """Entry points make obs:// known to fsspec and universal-pathlib in a fresh process."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "from airflow.sdk import ObjectStoragePath\n"
        "p = ObjectStoragePath('obs://bucket/dir/key.log', conn_id='modelarts_default')\n"
        "print(str(p), type(p.fs).__name__)\n"
    )
    conn = {
        "conn_type": "modelarts",
        "login": "EXAMPLEAK0000000001",
        "password": "ExampleSecretKey000000000000",
        "extra": {"project_id": "p1", "region": "cn-north-4"},
    }
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_MODELARTS_DEFAULT": json.dumps(conn)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    uri, fs_class = out.stdout.splitlines()[-1].split()
    assert uri.startswith("obs://") and uri.endswith("bucket/dir/key.log")
    assert fs_class == "OBSFileSystem"
    assert "not explicitly implemented" not in out.stdout + out.stderr
