"""`--push_to_hub`: upload a finished conversion with huggingface_hub (a thin wrapper; needs network and a token)."""

from __future__ import annotations

from pathlib import Path


def push_checkpoint_to_hub(directory: str | Path, repo_id: str, private: bool = False,
                           commit_message: str = "Upload DeepSeek-VL converted with transformers_dsvl") -> str:
    """Create `repo_id` if needed and upload every file of `directory`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                               commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


__all__ = ["push_checkpoint_to_hub"]
