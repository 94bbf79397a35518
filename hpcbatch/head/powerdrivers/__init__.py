"""Power drivers for MANAGED pools and for fencing: one module per driver, one small interface.

Every pool driver has ``power_on(nodes)``, ``power_off(nodes)`` and ``state(nodes)`` on a
batch of nodes (``hpcbatch.head.powerdrivers.base.PoolDriver``); a failure is a ``PowerError``
whose message says why. ``command`` (Slurm's ResumeProgram/SuspendProgram), ``netns`` (the
test bed's), ``redfish`` (BMCs), ``ipmi`` (BMCs, pyghmi) and ``cloud`` (EC2 instances from a
launch template, boto3). ``hpcbatch.head.power`` picks one per pool from its config and
runs it; nothing here decides when.
"""
