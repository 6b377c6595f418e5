"""semdir-edit: GAN inversion and real-image editing along global and class-specific semantic directions."""

__version__ = "0.1.0"

__all__ = ["Editor"]


def __getattr__(name: str):
    # Lazy, so that `import semdir_edit` (and the CLI's start-up) does not import torch.
    if name == "Editor":
        from semdir_edit.editor import Editor

        return Editor
    raise AttributeError(name)
