"""Benchmark: the multipart upload alone, the archive's writer over s3fs against boto3 ``upload_part`` threads.

A moto S3 server runs in its own process on 127.0.0.1 (``--tls``: over HTTPS, as in
``bench_archive_s3.py``). Each side uploads ``--parts`` parts of 8 MiB from memory (no download, no
hashing of the log) in a fresh process, with 4 parts in flight and CRC-32 declared on the upload, as the
archive does:

* ``MultipartWriter`` over ``s3fs`` (the archive's upload path: the file system's own client, its event
  loop thread);
* the baseline: a ``boto3`` client, ``upload_part`` from 4 threads.

Both clients are created before the clock. Reported per side (medians of ``--runs`` alternating runs):
seconds to send every part, seconds to complete the upload, the client process's CPU and the S3 server's
CPU during the run; it shows where the archive's time to S3 goes. Prints a table; not a pass/fail test.

    .venv/bin/python benchmarks/bench_s3_parts.py [--parts 32] [--runs 3] [--tls]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from bench_archive_s3 import AK, REGION, SK, _child_env, _client, _cpu, _start_moto
from harness import run_json_child

MiB = 1024 * 1024
PART = 8 * MiB
IN_FLIGHT = 4
BUCKET = "bench-parts"
BASELINE = "boto3 upload_part, 4 threads (baseline)"
WRITER = "MultipartWriter over s3fs"


def _part() -> bytes:
    return os.urandom(PART)


def writer_child(endpoint: str, parts: int) -> None:
    import s3fs

    from airflow_provider_modelarts.archiving.multipart import MultipartWriter

    fs = s3fs.S3FileSystem(key=AK, secret=SK, client_kwargs={"endpoint_url": endpoint, "region_name": REGION})
    fs.connect()
    part = _part()
    cpu0, start = _cpu(resource.getrusage(resource.RUSAGE_SELF)), time.perf_counter()
    writer = MultipartWriter(fs, f"{BUCKET}/writer.bin", expected_size=parts * PART)
    for _ in range(parts):
        writer.write(part)
    writer.seal()
    sent = time.perf_counter()
    writer.commit()
    done = time.perf_counter()
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu0
    print(json.dumps({"parts": sent - start, "complete": done - sent, "cpu": cpu}))


def boto3_child(endpoint: str, parts: int) -> None:
    client = _client(endpoint)
    part = _part()
    cpu0, start = _cpu(resource.getrusage(resource.RUSAGE_SELF)), time.perf_counter()
    key = "boto3.bin"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32")["UploadId"]

    def send(number: int) -> dict:
        out = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=part, ChecksumAlgorithm="CRC32"
        )
        return {"PartNumber": number, "ETag": out["ETag"], "ChecksumCRC32": out["ChecksumCRC32"]}

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        done_parts = list(pool.map(send, range(1, parts + 1)))
    sent = time.perf_counter()
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": done_parts}
    )
    done = time.perf_counter()
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu0
    print(json.dumps({"parts": sent - start, "complete": done - sent, "cpu": cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="moto over HTTPS, as in bench_archive_s3.py")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, endpoint, parts = args.child
        return (writer_child if side == "writer" else boto3_child)(endpoint, int(parts))

    import psutil

    home = tempfile.mkdtemp(prefix="bench-s3-parts-")
    moto, endpoint = _start_moto(home if args.tls else None)
    rows: dict[str, list[dict]] = {BASELINE: [], WRITER: []}
    try:
        env = _child_env(home, "{}", endpoint, tls=args.tls)
        if args.tls:
            os.environ["AWS_CA_BUNDLE"] = env["AWS_CA_BUNDLE"]  # this process's own client too
        _client(endpoint).create_bucket(Bucket=BUCKET)
        server = psutil.Process(moto.pid)
        for i in range(args.runs):
            for name in (BASELINE, WRITER)[:: -1 if i % 2 else 1]:
                side = "boto3" if name == BASELINE else "writer"
                before = sum(server.cpu_times()[:2])
                res = run_json_child(__file__, ["--child", side, endpoint, str(args.parts)], env)
                res["server_cpu"] = sum(server.cpu_times()[:2]) - before
                rows[name].append(res)
                print(f"run {i + 1} {name}: parts {res['parts']:.2f}s", flush=True)
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    total = args.parts * PART
    print(
        f"\n{args.parts} parts of 8 MiB to s3:// on moto ({'https' if args.tls else 'http'}), "
        f"{IN_FLIGHT} in flight, CRC-32; medians of {args.runs} runs; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':42}{'parts s':>9}{'MB/s':>7}{'complete s':>12}{'client cpu s':>14}{'S3 cpu s':>10}")
    for name, runs in rows.items():

        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{name:42}{med('parts'):>9.2f}{total / med('parts') / 1e6:>7.0f}{med('complete'):>12.2f}"
            f"{med('cpu'):>14.2f}{med('server_cpu'):>10.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
