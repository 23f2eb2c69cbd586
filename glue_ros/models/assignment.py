"""Match extraction from a log assignment, shared by LightGlue and SuperGlue (one definition)."""
from __future__ import annotations

import torch


def mutual_matches(log_assignment: torch.Tensor, alive0: torch.Tensor, alive1: torch.Tensor,
                   threshold: float) -> tuple[torch.Tensor, ...]:
    """Mutual best matches of a (B, M+1, N+1) log assignment among the ``alive`` points.
    Returns matches0, matches1 (-1 = none) and the scores of mutual best pairs."""
    sim = log_assignment[:, :-1, :-1]
    b, m, n = sim.shape
    if m == 0 or n == 0:
        return (sim.new_full((b, m), -1, dtype=torch.long), sim.new_full((b, n), -1, dtype=torch.long),
                sim.new_zeros(b, m), sim.new_zeros(b, n))
    best0, best1 = sim.max(2), sim.max(1)
    m0, m1 = best0.indices, best1.indices
    mutual0 = alive0 & (m1.gather(1, m0) == torch.arange(m, device=sim.device))
    mutual1 = alive1 & (m0.gather(1, m1) == torch.arange(n, device=sim.device))
    scores0 = torch.where(mutual0, best0.values.exp(), 0.0)
    scores1 = torch.where(mutual1, scores0.gather(1, m1), 0.0)
    valid0 = mutual0 & (scores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, m1)
    return torch.where(valid0, m0, -1), torch.where(valid1, m1, -1), scores0, scores1
