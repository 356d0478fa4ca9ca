# exercise: ex1_top_k_gating
# score: 5
# An honest answer: full marks.
def top_k_gating(logits, k):
    probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
    experts = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [N, k]
    gates = probs.gather(1, experts)  # [N, k]
    if k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return probs, gates, experts
