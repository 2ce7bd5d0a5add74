"""`prefix-tuning serve`: its flags (or a recipe) parsed into :class:`~.settings.ServeSettings`, then the server.

    prefix-tuning serve --adapter acme=runs/acme --adapter globex=org/globex-prefix@v2 [--port 8000]
    prefix-tuning serve recipes/serve_example.yaml --port 9000   # flags override the recipe
    prefix-tuning serve --help

Parsed by the training command's machinery (:mod:`prefix_tuning_utils.arguments`): an ``HfArgumentParser`` whose
errors are one line, a recipe (.yaml/.json) first with unknown keys refused, unknown flags named with the nearest
known one, no abbreviations. A recipe gives the adapters as a mapping (``adapter: {acme: runs/acme}``) or as a list
of ``NAME=SOURCE``; ``--adapter`` on the command line replaces the recipe's adapters as a whole.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field

from .. import run_log
from ..arguments import _flags_given, _into_dataclasses, _Parser, _refuse_unknown, _split_recipe, _use_recipe
from ..errors import ArgumentError
from .settings import LOG_LEVELS, ServeSettings, SettingsError


logger = logging.getLogger(__name__)

__all__ = ["API_KEY_ENV", "ServeArguments", "main", "parse_serve_args"]

PROG = "prefix-tuning serve"
API_KEY_ENV = "PREFIX_TUNING_API_KEY"
SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")
# ServeSettings' names of the settings whose flag is spelt otherwise.
FLAG_OF_SETTING = {
    "adapters": "adapter",
    "mode": "predict_mode",
    "dtype": "bf16",
    "body_timeout_s": "body_timeout",
    "graceful_timeout_s": "graceful_timeout",
}


@dataclass
class ServeArguments:
    """Serve adapters trained by this package over HTTP: many prefix (or prompt) adapters of one frozen base model,
    answered together in mixed batches. Routes: POST /predict, POST /adapters/NAME (the Hugging Face Inference API's
    text-classification body), GET /adapters, GET /health, GET /metrics, GET /docs."""

    adapter: list[str] | None = field(
        default=None,
        metadata={
            "help": "An adapter to serve, as NAME=SOURCE: SOURCE is a training run's --output_dir or a Hub id, with "
            "@REVISION if needed (acme=runs/acme, globex=org/globex-prefix@v2). Repeat it for each adapter. Prefix "
            "and prompt adapters of one base model are served together; a LoRA adapter or a fully fine-tuned model "
            "alone. In a recipe: a mapping {NAME: SOURCE}.",
            "action": "append",
        },
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to listen on. The default answers this machine only; 0.0.0.0 listens on all."},
    )
    port: int = field(default=8000, metadata={"help": "Port to listen on (0: any free port; the log names it)."})
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": f"Require `Authorization: Bearer KEY` on every route but /health. Default: the environment "
            f"variable {API_KEY_ENV} (better than this flag, which other users of the machine can see in the "
            "process list); neither: no key."
        },
    )
    max_batch_size: int = field(
        default=64, metadata={"help": "Most rows answered in one forward (rows of any requests and adapters)."}
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Longest time a row waits for others to fill its batch (0: answer what is waiting now)."},
    )
    predict_mode: str = field(
        default="score",
        metadata={
            "help": "`score`: every label word ranked, its probability as score; `generate`: the model writes its "
            "answer (label null when it is no label word).",
            "choices": ["score", "generate"],
        },
    )
    bf16: bool = field(default=False, metadata={"help": "Load the model in bfloat16 (GPU, or a CPU with bf16)."})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: the first GPU when there is one)."}
    )
    max_inputs_per_request: int = field(
        default=128, metadata={"help": "Most texts in one request; more is refused with 413."}
    )
    max_chars_per_input: int = field(
        default=4096,
        metadata={"help": "Most characters of one text; more is refused with 413 (the model reads at most its "
                  "max_source_length tokens of it anyway)."},
    )  # fmt: skip
    max_queued_rows: int = field(
        default=1024, metadata={"help": "Most rows waiting for a batch; a request that would pass it gets 429."}
    )
    body_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a client has to send its request body (then 408)."}
    )
    graceful_timeout: float = field(
        default=30.0,
        metadata={"help": "On SIGTERM, seconds to wait for the requests in flight before cancelling them."},
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "Hub token for private adapters or base models (default: the one of `hf auth login`)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    log_level: str = field(default="info", metadata={"help": "Log level.", "choices": list(LOG_LEVELS)})
    access_log: bool = field(default=True, metadata={"help": "Log a line per request (uvicorn's access log)."})

    def to_settings(self) -> ServeSettings:
        """The settings these flags say; a setting's refusal is worded as its flag's."""
        api_key = self.api_key
        if api_key is None and API_KEY_ENV in os.environ:
            api_key = os.environ[API_KEY_ENV]
            if not api_key.strip():
                raise ArgumentError(f"{API_KEY_ENV} is set but empty: set it to a key, or unset it.")
        try:
            return ServeSettings(
                adapters=_adapter_sources(self.adapter),
                mode=self.predict_mode,
                dtype="bfloat16" if self.bf16 else None,
                device=self.device,
                token=self.token,
                cache_dir=self.cache_dir,
                host=self.host,
                port=self.port,
                api_key=api_key,
                max_batch_size=self.max_batch_size,
                max_wait_ms=self.max_wait_ms,
                max_inputs_per_request=self.max_inputs_per_request,
                max_chars_per_input=self.max_chars_per_input,
                max_queued_rows=self.max_queued_rows,
                body_timeout_s=self.body_timeout,
                graceful_timeout_s=self.graceful_timeout,
                log_level=self.log_level,
                access_log=self.access_log,
            )
        except SettingsError as err:
            raise ArgumentError(f"--{FLAG_OF_SETTING.get(err.setting, err.setting)} {err.problem}") from None


def _adapter_sources(given) -> dict[str, str]:
    """{name: source} from --adapter (lists of NAME=SOURCE, one list per flag) or a recipe's mapping or list."""
    if not given:
        raise ArgumentError(
            "Nothing to serve: give at least one --adapter NAME=SOURCE (a training run's --output_dir or a Hub id)."
        )
    if isinstance(given, dict):
        pairs = [(str(name), None if source is None else str(source)) for name, source in given.items()]
    else:
        pairs = []
        for item in given:
            for entry in item if isinstance(item, list) else [item]:
                name, equals, source = str(entry).partition("=")
                if not equals or not name.strip() or not source.strip():
                    raise ArgumentError(
                        f"--adapter {entry!r}: expected NAME=SOURCE, e.g. acme=runs/acme or globex=org/globex@v2."
                    )
                pairs.append((name.strip(), source.strip()))
    sources: dict[str, str] = {}
    for name, source in pairs:
        if name in sources:
            raise ArgumentError(f"--adapter {name} is given twice ({sources[name]} and {source}): names must differ.")
        if not source:
            raise ArgumentError(f"--adapter {name} has no source: give {name}=FOLDER or {name}=HUB_ID[@REVISION].")
        sources[name] = source
    return sources


def build_serve_parser() -> _Parser:
    return _Parser(ServeArguments, prog=PROG, description=ServeArguments.__doc__, allow_abbrev=False)


def parse_serve_args(argv: list[str]) -> ServeSettings:
    """`prefix-tuning serve [RECIPE] FLAGS` -> settings, with the rules of the training command (module docstring)."""
    parser = build_serve_parser()
    recipe, cli = _split_recipe(parser, list(argv), help_command=f"{PROG} --help")
    if "adapter" in _flags_given(parser, cli):  # the command line's adapters replace the recipe's
        recipe.pop("adapter", None)
    _use_recipe(parser, recipe)
    _refuse_unknown(parser, cli)
    (args,) = _into_dataclasses(parser, cli)
    return args.to_settings()


def setup_logging(level: str) -> None:
    """The logging of every command (`run_log.setup_logging`: lines on stdout, so that stderr holds only a failure's
    one line), at `level` for this package and uvicorn."""
    run_log.setup_logging(level=level)
    logging.getLogger("uvicorn").setLevel(logging.getLevelName(level.upper()))


def main(argv: list[str]) -> None:
    """Parse, check that the serve extra is installed, then serve until SIGTERM."""
    settings = parse_serve_args(argv)
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ArgumentError(
            f"`{PROG}` needs {', '.join(missing)}: pip install -e '.[serve]' (from the repository), or pip install "
            "'prefix-tuning[serve]'."
        )
    setup_logging(settings.log_level)
    from .server import serve

    serve(settings)
