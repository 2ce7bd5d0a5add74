"""One file of a model or adapter, from a local folder or a Hub repo: the one place the package looks files up.

Every download of a single file goes through `get_hub_file`, the package's one call of huggingface_hub's
`hf_hub_download` (models and adapters here, the Financial PhraseBank archive in `data`); a failure is worded by
`network.hub_step` around the step that asked for it. (transformers and peft download the weights, configs and
tokenizers themselves, inside `from_pretrained`.)
"""

from __future__ import annotations

import os


__all__ = ["HUB_DOWNLOAD_KWARGS", "find_model_file", "get_hub_file", "get_model_file"]

# The keyword arguments of from_pretrained / load_adapter that say where and how to download (passed on as they are).
HUB_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


def get_hub_file(repo_id: str, filename: str, subfolder: str | None = None, repo_type: str = "model", **hub_kwargs):
    """Local path of ``filename`` in the Hub repo ``repo_id``: downloaded, or from the cache.

    ``hub_kwargs``: any of :data:`HUB_DOWNLOAD_KWARGS` (others are ignored). Raises huggingface_hub's errors.
    """
    from huggingface_hub import hf_hub_download

    download_kwargs = {key: hub_kwargs[key] for key in HUB_DOWNLOAD_KWARGS if key in hub_kwargs}
    return hf_hub_download(str(repo_id), filename, subfolder=subfolder, repo_type=repo_type, **download_kwargs)


def get_model_file(path_or_repo, filename: str, subfolder: str | None = None, **hub_kwargs) -> str:
    """Local path of ``filename`` in the folder ``path_or_repo`` (``/subfolder``), or downloaded from that Hub repo.

    ``hub_kwargs``: any of :data:`HUB_DOWNLOAD_KWARGS` (others are ignored). Raises ``FileNotFoundError`` for a
    missing local file and huggingface_hub's errors for the Hub (``OSError`` subclasses; ``ValueError`` for a string
    that is not a repo id).
    """
    folder = os.path.join(path_or_repo, subfolder) if subfolder else str(path_or_repo)
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing.")
        return path
    return get_hub_file(str(path_or_repo), filename, subfolder, **hub_kwargs)


def find_model_file(path_or_repo, filename: str, subfolder: str | None = None, **hub_kwargs) -> str | None:
    """:func:`get_model_file`, or None where the file, the folder or the repo is missing.

    A Hub that cannot be reached or fails is raised, not taken for a missing file (an adapter would pass for a plain
    model); offline (HF_HUB_OFFLINE=1) the cache is all there is, and a file it lacks counts as missing.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return get_model_file(path_or_repo, filename, subfolder, **hub_kwargs)
    except LocalEntryNotFoundError:  # not in the cache, and the Hub was not asked or did not answer
        if constants.HF_HUB_OFFLINE:
            return None
        raise
    except (FileNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError, HFValidationError):
        return None
