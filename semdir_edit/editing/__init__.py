"""Editing files with an :class:`~semdir_edit.editor.Editor`: ``apply`` on latent files, ``batch`` on folders."""
