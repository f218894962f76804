"""``obs://`` for Airflow's ``ObjectStoragePath``: Huawei Cloud OBS through its S3-compatible API (s3fs).

Credentials come from an Airflow connection (default ``modelarts_default``): the ``modelarts`` connection's
AK (login), SK (password) and optional ``security_token`` extra, or any connection laid out the same way.
The endpoint is ``https://obs.{region}.myhuaweicloud.com``; the extra ``obs_endpoint`` overrides it (for
other clouds, private endpoints, or tests). ``obs_config_kwargs`` (a dict) is passed to botocore's config,
over the defaults ``request_checksum_calculation`` and ``response_checksum_validation`` ``"when_required"``
(OBS refuses the checksum headers botocore sends by default).

Needs the optional extra ``airflow-provider-modelarts[obs]`` (s3fs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID
from airflow_provider_modelarts.exceptions import ModelArtsConfigError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["OBSFileSystem", "OBSPath", "get_fs", "obs_endpoint", "register_obs_scheme", "schemes"]  # noqa: F822 - built on first use (module __getattr__)

schemes = ["obs"]
OBS_ENDPOINT_TEMPLATE = "https://obs.{region}.myhuaweicloud.com"
# OBS's S3-compatible API refuses the flexible-checksum headers (x-amz-checksum-*,
# x-amz-sdk-checksum-algorithm, aws-chunked trailers) that botocore >= 1.36 sends by default, so
# checksums are sent and checked only where an operation requires them. The archive verifies every log
# end to end with its own sha256 either way. ``obs_config_kwargs`` overrides these.
OBS_CONFIG_DEFAULTS: dict[str, Any] = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


def __getattr__(name: str) -> Any:
    # Built on first use so that importing this module does not need s3fs.
    if name == "OBSFileSystem":
        cls = _obs_filesystem_class()
        globals()[name] = cls
        return cls
    if name == "OBSPath":
        # universal-pathlib entry point: importing this module registered the obs:// flavour already.
        from upath.implementations.cloud import CloudPath

        return CloudPath
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _obs_filesystem_class() -> type:
    try:
        from s3fs import S3FileSystem
    except ImportError as e:
        raise ImportError(
            "obs:// paths need s3fs, which is not installed. "
            "Install it with: pip install 'airflow-provider-modelarts[obs]'"
        ) from e

    class OBSFileSystem(S3FileSystem):
        """``s3fs.S3FileSystem`` speaking to OBS's S3-compatible API under the ``obs://`` scheme."""

        protocol = ("obs",)

    OBSFileSystem.__module__ = __name__
    OBSFileSystem.__qualname__ = "OBSFileSystem"
    return OBSFileSystem


def register_obs_scheme() -> None:
    """Teach fsspec and universal-pathlib that ``obs://bucket/key`` is a bucket-style URL.

    Airflow's ``ObjectStoragePath`` parses a URL with universal-pathlib before it asks the provider for
    the filesystem, so the scheme must be known to both libraries; done when this module is imported
    (importing the provider's operators does it). Idempotent.
    """
    import fsspec

    fsspec.register_implementation(
        "obs",
        f"{__name__}.OBSFileSystem",
        clobber=True,
        errtxt="obs:// paths need s3fs: pip install 'airflow-provider-modelarts[obs]'",
    )
    try:
        import upath.registry
        from upath._flavour import WrappedFileSystemFlavour
        from upath._flavour_sources import S3FileSystemFlavour, flavour_registry
    except ImportError:  # pragma: no cover - other universal-pathlib layouts
        return
    if "obs" not in flavour_registry:

        class _OBSFlavour(S3FileSystemFlavour):
            protocol = ("obs",)  # type: ignore[assignment]

    WrappedFileSystemFlavour.protocol_config["netloc_is_anchor"].add("obs")
    upath.registry.register_implementation("obs", "upath.implementations.cloud.CloudPath", clobber=True)


def _extra(conn: Any) -> dict[str, Any]:
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return dict(extra or {})


def obs_endpoint(extra: dict[str, Any]) -> str:
    """Return the OBS endpoint for a connection's extras.

    :param extra: the connection's extra fields.
    :raises ModelArtsConfigError: neither ``obs_endpoint`` nor ``region`` is set.
    """
    if extra.get("obs_endpoint"):
        return str(extra["obs_endpoint"]).rstrip("/")
    region = extra.get("region")
    if not region:
        raise ModelArtsConfigError(
            "obs:// needs the OBS region: set 'region' (e.g. cn-north-4) or 'obs_endpoint' in the connection extra"
        )
    return OBS_ENDPOINT_TEMPLATE.format(region=region)


def _config_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    """botocore config: the OBS defaults this botocore knows (older ones send no checksums), then the user's."""
    from botocore.config import Config

    defaults = {k: v for k, v in OBS_CONFIG_DEFAULTS.items() if k in Config.OPTION_DEFAULTS}
    return {**defaults, **dict(extra.get("obs_config_kwargs") or {})}


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> AbstractFileSystem:
    """Build the filesystem Airflow uses for ``obs://`` paths.

    :param conn_id: Airflow connection holding the AK/SK (``modelarts_default`` when ``None``).
    :param storage_options: extra keyword arguments for ``s3fs.S3FileSystem``.
    """
    fs_class = _obs_filesystem_class()

    from airflow.providers.common.compat.sdk import BaseHook, mask_secret

    conn = BaseHook.get_connection(conn_id or DEFAULT_CONN_ID)
    extra = _extra(conn)
    key, secret = conn.login, conn.password
    if not key or not secret:
        raise ModelArtsConfigError(
            f"obs:// needs an access key and secret key: connection {conn.conn_id!r} has no login/password "
            "(token-authenticated connections cannot sign OBS requests; use a dedicated AK/SK connection)"
        )
    token = extra.get("security_token") or None
    for value in (secret, token):
        if value:
            mask_secret(value)
            mask_secret(quote(value, safe=""))

    try:
        endpoint = obs_endpoint(extra)
    except ModelArtsConfigError as err:
        raise ModelArtsConfigError(f"Connection {conn.conn_id!r}: {err}") from None
    region = extra.get("region")
    client_kwargs: dict[str, Any] = {}
    if region:
        client_kwargs["region_name"] = region
    options: dict[str, Any] = {
        "key": key,
        "secret": secret,
        "token": token,
        "endpoint_url": endpoint,
        "client_kwargs": client_kwargs,
        "config_kwargs": _config_kwargs(extra),
    }
    options.update(storage_options or {})
    return fs_class(**options)


register_obs_scheme()
