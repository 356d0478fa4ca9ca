# exercise: ex1_top_k_gating
# score: 3
# A real mistake: the gates are detached, so the router gets no gradient (ex1_gates fails, the rest passes).
def top_k_gating(logits, k):
    probs = torch.softmax(logits.float(), dim=-1).detach()
    experts = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
    gates = probs.gather(1, experts)
    return probs, (gates / gates.sum(-1, keepdim=True) if k > 1 else gates), experts
