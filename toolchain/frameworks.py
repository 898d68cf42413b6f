"""Checkpoints saved by any of transformers' frameworks: PyTorch weights load as they are; TensorFlow
(`tf_model.h5`) and JAX / Flax (`flax_model.msgpack`) weights go through transformers' own
converters, with the framework installed by the `tf` or `flax` extra.

transformers 4.57's `from_pretrained(..., from_tf=True / from_flax=True)` creates the model on the
meta device and then copies the converted weights into it, which is a no-op there (the model
comes back with no data: transformers issue 37999). So the converters run here on a model built
on the CPU, the checkpoint's own architecture, and its state dict then goes through the ordinary
`from_pretrained(state_dict=...)`: the same key matching and missing-weight report as for PyTorch
weights, into whichever head class the caller asks for.

transformers (and torch with it) is imported inside the functions that use it, as in `toolchain.checkpoint`.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from toolchain.errors import ExportError

PYTORCH_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
FOREIGN_FILES = {"tf": "tf_model.h5", "flax": "flax_model.msgpack"}
# What each framework needs importable, and the extra that installs it.
REQUIRES = {"tf": ("tensorflow", "tf_keras"), "flax": ("jax", "flax")}
NAMES = {"tf": "TensorFlow", "flax": "JAX / Flax"}


def _cached(location: str, filename: str, revision: str | None) -> str | None:
    from transformers.utils import cached_file

    try:
        return cached_file(
            location,
            filename,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return None


def weights_of(location: str, revision: str | None = None) -> tuple[str, str | None]:
    """('pt', None) when the checkpoint has PyTorch weights (preferred), else ('tf' | 'flax', file path)."""
    for name in PYTORCH_FILES:
        if _cached(location, name, revision):
            return "pt", None
    for framework, name in FOREIGN_FILES.items():
        path = _cached(location, name, revision)
        if path:
            return framework, path
    return "pt", None  # let from_pretrained report what is missing, in its own words


def require(framework: str, source: str) -> None:
    missing = [module for module in REQUIRES[framework] if find_spec(module) is None]
    if missing:
        raise ExportError(
            f"{source}: holds {NAMES[framework]} weights ({FOREIGN_FILES[framework]}) and reading them needs "
            f"{' and '.join(missing)}: pip install 'electra-serve[{framework}]'"
        )


def _converted_state_dict(framework: str, path: str, config: Any) -> dict[str, Any]:
    import transformers

    architecture = next((a for a in config.architectures or [] if hasattr(transformers, a)), "ElectraModel")
    model = getattr(transformers, architecture)(config)  # on the CPU: the converters copy into real tensors
    if framework == "tf":
        from transformers.modeling_tf_pytorch_utils import load_tf2_checkpoint_in_pytorch_model

        model = load_tf2_checkpoint_in_pytorch_model(model, path, allow_missing_keys=True)
    else:
        from transformers.modeling_flax_pytorch_utils import load_flax_checkpoint_in_pytorch_model

        model = load_flax_checkpoint_in_pytorch_model(model, path)
    return model.state_dict()


def from_pretrained(
    model_class: Any,
    location: str,
    source: str,
    *,
    revision: str | None = None,
    config: Any = None,
    ignore_mismatched_sizes: bool = False,
):
    """`model_class.from_pretrained(location, config=config, output_loading_info=True)` for weights of
    any framework: returns (model, loading info). `source` is what the user named, for messages."""
    framework, path = weights_of(location, revision)
    options: dict[str, Any] = {"output_loading_info": True, "ignore_mismatched_sizes": ignore_mismatched_sizes}
    if config is not None:
        options["config"] = config
    if framework == "pt":
        return model_class.from_pretrained(location, revision=revision, **options)
    require(framework, source)
    from transformers import AutoConfig

    own_config = AutoConfig.from_pretrained(location, revision=revision)
    options.setdefault("config", own_config)
    state_dict = _converted_state_dict(framework, str(path), own_config)
    model, info = model_class.from_pretrained(None, state_dict=state_dict, **options)
    # Loaded from a state dict, the model would name no checkpoint: optimum's exporter then looks
    # for processor files of a hub model called "None" (network retries, minutes offline).
    model.config._name_or_path = model.name_or_path = location
    return model, info
