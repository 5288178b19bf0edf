"""Pure TPM 2.0 evidence handling for the server: parse, verify, wrap.

Nothing here talks to a TPM or imports ``tpm2_pytss``; inputs are the marshalled
bytes a client sent, outputs are frozen records or an
:class:`~shared.errors.AttestgateError` with a code from the closed list.
"""
