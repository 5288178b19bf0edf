"""Regenerate tests/unit/tpm/tpm_kat_data.py from a fresh swtpm.

Run from the repository root: ``.venv/bin/python tests/integration/tpm/record_tpm_kat.py``.
It prints the module to stdout; review it, then redirect it into place.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import swtpm_tpm_helper as helper
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_TK_HASHCHECK,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

A = TPMA_OBJECT
AK_ATTRS = (A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH
            | A.RESTRICTED | A.SIGN_ENCRYPT)
SRK_ATTRS = (A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH
             | A.RESTRICTED | A.DECRYPT | A.NODA)
POST_ATTRS = A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH | A.SIGN_ENCRYPT


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        helper.make_ca(base / "ca")
        helper.provision(base / "state", base / "ca")
        tpm = helper.start(base / "state")
        out: dict[str, bytes] = {}
        try:
            ectx = ESAPI(tpm.tcti)
            nv = NVReadEK(ectx)
            for label, ek_type in (("EK_RSA", "EK-RSA2048"), ("EK_P384", "EK-HIGH-ECC384")):
                cert, templ = create_ek_template(ek_type, nv)
                ek, ek_pub, *_ = ectx.create_primary(None, templ, ESYS_TR.ENDORSEMENT)
                out[f"{label}_PUBLIC"] = ek_pub.marshal()
                out[f"{label}_CERT"] = cert
                ectx.flush_context(ek)
            out["EK_CA_CERT_PEM"] = (base / "ca" / "issuercert.pem").read_bytes()
            ak, ak_pub, *_ = ectx.create_primary(
                None, TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null",
                                                     objectAttributes=AK_ATTRS)),
                ESYS_TR.ENDORSEMENT)
            out["AK_PUBLIC"] = ak_pub.marshal()
            nonce = hashlib.sha256(b"attestgate kat nonce").digest()
            out["NONCE"] = nonce
            att, sig = ectx.quote(ak, "sha256:0,1,2,3,4,5,6,7", nonce)
            out["QUOTE_ATTEST"], out["QUOTE_SIGNATURE"] = bytes(att), sig.marshal()
            _, _, digests = ectx.pcr_read("sha256:0,1,2,3,4,5,6,7")
            out["QUOTE_PCRS"] = b"".join(bytes(x) for x in digests)
            srk, srk_pub, *_ = ectx.create_primary(
                None, TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:aes128cfb",
                                                     objectAttributes=SRK_ATTRS)), ESYS_TR.OWNER)
            out["SRK_PUBLIC"] = srk_pub.marshal()
            att, sig = ectx.certify(srk, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            out["CERTIFY_SRK_ATTEST"], out["CERTIFY_SRK_SIGNATURE"] = bytes(att), sig.marshal()
            priv, post_pub, *_ = ectx.create(srk, None, TPM2B_PUBLIC(TPMT_PUBLIC.parse(
                "ecc256:ecdsa-sha256", objectAttributes=POST_ATTRS)))
            post = ectx.load(srk, priv, post_pub)
            out["POST_PUBLIC"] = post_pub.marshal()
            digest = hashlib.sha256(b"attestgate/1 post" + b"hello").digest()
            scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
            scheme.details.any.hashAlg = TPM2_ALG.SHA256
            sig = ectx.sign(post, digest, scheme,
                            TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL))
            out["POST_DIGEST"], out["POST_SIGNATURE"] = digest, sig.marshal()
            ectx.close()
        finally:
            tpm.stop()
    print('"""Known-answer blobs recorded from swtpm 0.7.1 + tpm2-pytss 3.0.0.')
    print()
    print("Regenerate with tests/integration/tpm/record_tpm_kat.py. The EK certificates are")
    print("signed by a throwaway EC CA (EK_CA_CERT_PEM) made for the recording.")
    print('"""')
    print()
    for key, value in out.items():
        print(f"{key} = bytes.fromhex(")
        h = value.hex()
        for i in range(0, len(h), 88):
            print(f'    "{h[i:i + 88]}"')
        print(")")


if __name__ == "__main__":
    main()
