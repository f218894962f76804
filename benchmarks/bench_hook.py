"""Print the cost of signing one request and of a ``get_training_job`` round trip on loopback.

Signing is compared with the official ``huaweicloudsdkcore`` signer on the same request in the same run;
round trips run against the local emulator in AK/SK and token modes (and, as a baseline, the official
SDK client in AK/SK mode). Figures only, no pass/fail.

Usage: ``python benchmarks/bench_hook.py [--sign-iterations N] [--calls N]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
PID = "0123456789abcdef0123456789abcdef"
HOST = "modelarts.cn-north-4.myhuaweicloud.com"
PATH = f"/v2/{PID}/training-job-searches"
QUERY = [("limit", 1), ("name", "a b/c~*")]
BODY = b'{"offset":0,"limit":1}'
HEADERS = {"Content-Type": "application/json", "User-Agent": "airflow-provider-modelarts/bench"}
DATE = "20240101T000000Z"


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _time_each(fn: Callable[[], object], iterations: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def bench_signing(iterations: int) -> None:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    from airflow_provider_modelarts.auth import AkSkSigner

    ours = AkSkSigner(AK, SK, project_id=PID)

    def sign_ours() -> object:
        return ours.sign(
            "POST", f"https://{HOST}{PATH}", params=QUERY, headers={**HEADERS, "X-Sdk-Date": DATE}, body=BODY
        )

    sdk_signer = Signer(BasicCredentials(AK, SK, PID))

    def sign_sdk() -> object:
        # The SDK mutates the request, so build a fresh one per call (as its client does).
        request = SdkRequest(
            method="POST",
            schema="https",
            host=HOST,
            resource_path=PATH,
            query_params=list(QUERY),
            header_params={**HEADERS, "X-Project-Id": PID, "X-Sdk-Date": DATE},
            body=BODY,
        )
        return sdk_signer.sign(request)

    assert sign_ours().headers["Authorization"] == sign_sdk().header_params["Authorization"]  # type: ignore[attr-defined]
    ours_us = _time_each(sign_ours, iterations)
    sdk_us = _time_each(sign_sdk, iterations)
    print(f"Signing one POST with query + body ({iterations} iterations, same signature from both):")
    print(
        f"  airflow_provider_modelarts.auth   median {statistics.median(ours_us):7.1f} us  p95 {_percentile(ours_us, 95):7.1f} us"
    )
    print(
        f"  huaweicloudsdkcore Signer (base)  median {statistics.median(sdk_us):7.1f} us  p95 {_percentile(sdk_us, 95):7.1f} us"
    )


def bench_round_trips(calls: int) -> None:
    import tenacity

    from airflow_provider_modelarts.auth import TOKEN_CACHE
    from airflow_provider_modelarts.emulator import ModelArtsEmulator
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    print(f"\nget_training_job round trip on loopback against the emulator ({calls} calls per mode):")
    with ModelArtsEmulator() as emu:
        for mode in ("aksk", "token"):
            TOKEN_CACHE.clear()
            os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = emu.connection_json(mode)
            hook = ModelArtsHook(retry_wait=tenacity.wait_none())
            emu.reset_counters()
            hook.get_training_job("job-ok")  # connection parse, session, token
            ms = [
                us / 1000
                for us in _time_each(functools.partial(hook.get_training_job, "job-ok"), calls, warmup=10)
            ]
            counters = dict(emu.counters)
            print(
                f"  ModelArtsHook {mode:5}  median {statistics.median(ms):6.2f} ms  p95 {_percentile(ms, 95):6.2f} ms"
                f"  API calls {counters.get('job', 0)}  IAM calls {counters.get('iam_token', 0)}"
                f"  rejected {counters.get('rejected_auth', 0)}"
            )

        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        from huaweicloudsdkmodelarts.v1 import ModelArtsClient, ShowTrainingJobDetailsRequest

        client = (
            ModelArtsClient.new_builder()
            .with_credentials(BasicCredentials(emu.ak, emu.sk, emu.project_id))
            .with_endpoint(emu.url)
            .build()
        )
        request = ShowTrainingJobDetailsRequest(training_job_id="job-ok")
        emu.reset_counters()
        ms = [
            us / 1000
            for us in _time_each(lambda: client.show_training_job_details(request), calls, warmup=10)
        ]
        print(
            f"  official SDK aksk   median {statistics.median(ms):6.2f} ms  p95 {_percentile(ms, 95):6.2f} ms"
            f"  API calls {emu.counters['job']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sign-iterations", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="modelarts-bench-"))
    bench_signing(args.sign_iterations)
    bench_round_trips(args.calls)


if __name__ == "__main__":
    main()
