"""`clawsvc upgrade`: provision, canary on a copy of the state, switch, verify, roll back."""
