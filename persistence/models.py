"""The example application's models: the tutorial's Car, and what later revisions added."""

from datetime import date

from sqlalchemy import Column, Date, ForeignKey, Integer, String, Text, text
from sqlalchemy.orm import relationship

from persistence.db import Base


class Car(Base):
    __tablename__ = "cars"

    id = Column(Integer, primary_key=True, index=True)
    make = Column(String)
    model = Column(String, unique=True, index=True)
    colour = Column(String)
    fuel_type = Column(String(20), nullable=True, server_default=text("'petrol'"))

    services = relationship("Service", back_populates="car", passive_deletes=True)


class Service(Base):
    __tablename__ = "services"

    id = Column(Integer, primary_key=True)
    car_id = Column(Integer, ForeignKey("cars.id", ondelete="CASCADE"), nullable=False, index=True)
    serviced_on: Column[date] = Column(Date, nullable=False)
    notes = Column(Text)

    car = relationship("Car", back_populates="services")
