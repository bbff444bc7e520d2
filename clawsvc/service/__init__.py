"""`clawsvc run`: the supervisor as a pure state machine (machine), its effects executor and its loop."""
