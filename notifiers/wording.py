"""What a scan code means, in the words a customer reads (one table per locale).

The detectors keep the carrier's own code table (``detectors.events.CODES``, USPS wording such as
"DC eVS arrive"); this package may not import it, and a customer should not read it anyway.
These tables say the same in plain words, capitalised to follow "last scan:" / "último
escaneo:". Codes after which a package scans no more (delivered, returned) are left out: an
alert never has one as its last scan. An unknown code has no wording (:func:`scan_text` returns
None) and the message then leaves the scan type out rather than showing the raw code.

>>> scan_text("A1", "en")
'Arrived at facility'
>>> scan_text("A1", "es")
'Llegó a la instalación'
>>> scan_text("ZZ", "es") is None, scan_text(["A1"], "en") is None
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["SCAN_TEXT", "scan_text"]

# code: (English, Spanish)
_ROWS: Final[dict[str, tuple[str, str]]] = {
    # before the carrier has the package
    "GX": ("Shipping label created", "Etiqueta de envío creada"),
    "MA": ("Shipping details received", "Datos del envío recibidos"),
    "89": ("Order details received from the sender", "Datos del pedido recibidos del remitente"),
    "TM": ("Waiting for the sender to hand it over", "En espera de que el remitente lo entregue"),
    "GC": ("Return receipt added", "Acuse de recibo añadido"),
    # accepted
    "03": ("Accepted", "Aceptado"),
    "OA": ("Accepted at origin", "Aceptado en origen"),
    "UA": ("Accepted at facility", "Aceptado en la instalación"),
    "PA": ("Accepted", "Aceptado"),
    "AD": ("Accepted at destination", "Aceptado en destino"),
    "43": ("Picked up", "Recogido"),
    "80": ("Picked up by shipping partner", "Recogido por una empresa colaboradora"),
    "83": ("Handed over to the postal service", "Entregado al servicio postal"),
    # on its way
    "10": ("Arrived at origin facility", "Llegó a la instalación de origen"),
    "A1": ("Arrived at facility", "Llegó a la instalación"),
    "19": ("Arrived at facility", "Llegó a la instalación"),
    "81": (
        "Arrived at shipping partner facility",
        "Llegó a la instalación de una empresa colaboradora",
    ),
    "41": ("Received at facility", "Recibido en la instalación"),
    "SF": ("Departed post office", "Salió de la oficina de correos"),
    "EF": ("Departed sorting facility", "Salió del centro de clasificación"),
    "T1": ("Departed facility", "Salió de la instalación"),
    "82": (
        "Departed shipping partner facility",
        "Salió de la instalación de una empresa colaboradora",
    ),
    "42": ("Handed over to shipping partner", "Entregado a una empresa colaboradora"),
    "TL": ("In transit to next facility", "En tránsito hacia la siguiente instalación"),
    "06": ("Forwarded", "Reenviado"),
    "08": ("Sent to the wrong facility", "Enviado a una instalación equivocada"),
    "15": ("Sent to the wrong destination", "Enviado a un destino equivocado"),
    # at the delivery office
    "07": ("Arrived at post office", "Llegó a la oficina de correos"),
    "PC": ("Sorting complete", "Clasificación terminada"),
    "14": ("Arrived at pickup point", "Llegó al punto de recogida"),
    "16": ("Available for pickup", "Disponible para recoger"),
    "17": ("Picked up by agent", "Recogido por un representante"),
    "OF": ("Out for delivery", "En reparto"),
    # delivery attempted
    "02": ("Delivery attempted", "Intento de entrega"),
    "52": ("Delivery attempted, notice left", "Intento de entrega, aviso dejado"),
    "53": ("Delivery attempted: mailbox blocked", "Intento de entrega: buzón bloqueado"),
    "54": (
        "Delivery attempted: mailbox full or item too large",
        "Intento de entrega: buzón lleno o envío demasiado grande",
    ),
    "55": (
        "Delivery attempted: no safe place to leave it",
        "Intento de entrega: no había un lugar seguro donde dejarlo",
    ),
    "56": (
        "Delivery attempted: nobody available to receive it",
        "Intento de entrega: no había nadie para recibirlo",
    ),
    "30": (
        "Delivery attempted: no access to the address",
        "Intento de entrega: sin acceso a la dirección",
    ),
    "51": ("Delivery attempted: business closed", "Intento de entrega: negocio cerrado"),
    # exceptions that do not end the journey
    "71": ("Rescheduled to the next delivery day", "Reprogramado para el siguiente día de reparto"),
    "DX": ("Delivery status not updated", "Estado de la entrega sin actualizar"),
    "04": ("Refused", "Rechazado"),
    "05": ("Cannot be delivered as addressed", "No se puede entregar en la dirección indicada"),
    "44": ("Recalled by the sender", "Retirado por el remitente"),
}

#: Customer-facing wording of each scan code, per locale.
SCAN_TEXT: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        locale: MappingProxyType({code: row[i] for code, row in _ROWS.items()})
        for i, locale in enumerate(("en", "es"))
    }
)


def scan_text(code: object, locale: str) -> str | None:
    """The wording of scan ``code`` in ``locale`` (English if the locale is unknown), or None."""
    if not isinstance(code, str):
        return None
    return SCAN_TEXT.get(locale, SCAN_TEXT["en"]).get(code)
