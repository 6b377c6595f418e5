"""Pictures of what the generator does: sample grids, style-mixing grids, noise variation."""

from __future__ import annotations

import torch

from semdir_edit.models import Generator


def _z(G: Generator, n: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def sample_images(G: Generator, n: int, seed: int, truncation_psi: float = 1.0) -> torch.Tensor:
    """(n, C, R, R) samples from seeded z, fixed noise."""
    device = next(G.parameters()).device
    return G(_z(G, n, seed, device), truncation_psi, noise_mode="const")


@torch.no_grad()
def style_mixing_grid(G: Generator, seed: int, rows: int = 6, cols: int = 6, cutoff: int | None = None,
                      truncation_psi: float = 1.0) -> tuple[torch.Tensor, int]:
    """StyleGAN's Fig. 3: the top row holds ``cols`` sources A, the left column ``rows`` sources B.

    Cell (r, c) takes the coarse layers [0, cutoff) from A_c and the fine layers from B_r; the
    top-left cell is blank. Returns the images ((rows+1) * (cols+1), C, R, R) row-major and the row length.
    """
    device = next(G.parameters()).device
    cutoff = G.num_ws // 2 if cutoff is None else cutoff
    w = G.mapping(_z(G, rows + cols, seed, device), truncation_psi)
    ws_a, ws_b = G.broadcast(w[:cols]), G.broadcast(w[cols:])
    img_a = G.synthesis(ws_a, noise_mode="const")
    img_b = G.synthesis(ws_b, noise_mode="const")
    mixed = G.synthesis(G.mix_styles(ws_a[None].expand(rows, -1, -1, -1).reshape(-1, G.num_ws, G.w_dim),
                                     ws_b[:, None].expand(-1, cols, -1, -1).reshape(-1, G.num_ws, G.w_dim),
                                     cutoff), noise_mode="const")
    blank = torch.full_like(img_a[:1], -1.0)
    cells = [torch.cat([blank, img_a])]
    for r in range(rows):
        cells.append(torch.cat([img_b[r:r + 1], mixed[r * cols:(r + 1) * cols]]))
    return torch.cat(cells), cols + 1


@torch.no_grad()
def noise_variation(G: Generator, seed: int, n: int = 8, truncation_psi: float = 1.0) -> torch.Tensor:
    """One code under ``n`` noise draws, followed by the per-pixel standard deviation (scaled to [-1, 1])."""
    device = next(G.parameters()).device
    ws = G.broadcast(G.mapping(_z(G, 1, seed, device), truncation_psi)).expand(n, -1, -1)
    torch.manual_seed(seed)
    images = G.synthesis(ws, noise_mode="random")
    std = images.std(dim=0, keepdim=True)
    std = std / std.max().clamp_min(1e-8) * 2 - 1
    return torch.cat([images, std])
