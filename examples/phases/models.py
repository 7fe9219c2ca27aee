"""The example application's models once the rename is done: `cars.colour` is `cars.color`.

The release that reads `color` ships between the two phases: the pre phase adds the column
and copies the values; the post phase, once no pod of the old release is left, copies what
the old release wrote meanwhile and drops `colour`.
"""

from datetime import date

from sqlalchemy import Column, Date, ForeignKey, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, relationship


class Base(DeclarativeBase):
    """The base class of every model."""


class Car(Base):
    __tablename__ = "cars"

    id = Column(Integer, primary_key=True, index=True)
    make = Column(String)
    model = Column(String, unique=True, index=True)
    color = Column(String)
    fuel_type = Column(String(20), nullable=True, server_default=text("'petrol'"))

    services = relationship("Service", back_populates="car", passive_deletes=True)


class Service(Base):
    __tablename__ = "services"

    id = Column(Integer, primary_key=True)
    car_id = Column(Integer, ForeignKey("cars.id", ondelete="CASCADE"), nullable=False, index=True)
    serviced_on: Column[date] = Column(Date, nullable=False)
    notes = Column(Text)

    car = relationship("Car", back_populates="services")
