"""The model repository extension (Triton's names, on both protocols): load and unload at run time.

`POST /v2/repository/models/{name}/load` and `.../unload` (HTTP), `RepositoryModelLoad` and
`RepositoryModelUnload` (gRPC) translate to `RepositoryControl`, which refuses unless the server
runs with `--model-control-mode explicit` and otherwise asks the registry, the model owner. A load
answers once the model serves (or with why it could not); an unload once its accepted requests
are answered and its memory is released. Authentication happens before (the front door).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.store import ModelStore

log = logging.getLogger("electra.repository")


class RepositoryControl:
    def __init__(self, models: ModelStore, mode: str) -> None:
        self.models = models
        self.mode = mode

    def _check(self, name: Any, parameters: Mapping[str, Any], ignored: tuple[str, ...] = ()) -> str:
        if self.mode != "explicit":
            raise ServeError(
                ErrorKind.BAD_REQUEST,
                f"models cannot be loaded or unloaded in model control mode '{self.mode}': "
                "start the server with --model-control-mode explicit",
            )
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ServeError(ErrorKind.BAD_REQUEST, "a model name is required")
        unsupported = sorted(str(k) for k in parameters if k not in ignored)
        if unsupported:
            raise ServeError(
                ErrorKind.BAD_REQUEST,
                f"load parameters are not supported ({', '.join(unsupported)}): "
                "a model loads as the repository holds it",
            )
        return name

    async def load(self, name: Any, parameters: Mapping[str, Any] | None = None) -> list[str]:
        """(Re)load; returns the versions that serve. A failed load leaves what served serving."""
        name = self._check(name, parameters or {})
        if not self.models.in_repository(name):
            raise ServeError(ErrorKind.NOT_FOUND, f"model '{name}' is not in the repository")
        try:
            versions = await self.models.load(name)
        except ModelLoadError as exc:
            raise ServeError(ErrorKind.BAD_REQUEST, f"failed to load model '{name}': {exc}") from exc
        log.info("model %s loaded on request: versions %s serve", name, ", ".join(versions))
        return versions

    async def unload(self, name: Any, parameters: Mapping[str, Any] | None = None) -> None:
        # tritonclient always sends unload_dependents; there are no ensembles to unload with a model.
        name = self._check(name, parameters or {}, ignored=("unload_dependents",))
        await self.models.unload(name)
        log.info("model %s unloaded on request", name)
