"""The original recipe's ModelDatabaseRouter (bench/recipe.py), as a Django router."""

from django.conf import settings

from recipe import make_recipe


class RecipeRouter:
    def __init__(self):
        self.available_db, self.router = make_recipe(settings, settings.RECIPE_STATUS_DIR)

    def db_for_read(self, model, **hints):
        return self.router.db_for_read(model, **hints)

    def db_for_write(self, model, **hints):
        return self.router.db_for_write(model, **hints)
