# exercise: ex4_alltoall_splits
# score: 3
# says: rank r's experts are columns r*m
# A real misconception, not an attack: per-expert counts cut by source instead of by destination.
# Task 1 is right (3 points); task 2 fails with the check's own hint.
def send_counts(expert, world_size, num_experts):
    m = num_experts // world_size
    out = torch.zeros(world_size, dtype=torch.long)
    for e in expert.reshape(-1).tolist():
        if e >= 0:
            out[e // m] += 1
    return out


# cell: ex4_recv_counts_solution
def recv_counts(counts, world_size):
    P, E = counts.shape
    return counts.view(P, world_size, E // world_size)
