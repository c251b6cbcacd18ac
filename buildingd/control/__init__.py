"""Pure decision logic: functions of (state, inputs, policy, now). No I/O, no clock reads."""
