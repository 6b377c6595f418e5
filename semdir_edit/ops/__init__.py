"""Differentiable building blocks the stages above share: the perceptual distance F, PSNR/SSIM, shifting codes
along directions (plain or class-locked), the visible-direction statistics and the logistic regression in W.

Each takes networks and tensors and returns tensors; nothing here reads or writes files.
"""
